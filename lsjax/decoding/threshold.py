"""FREE's adaptive exit threshold (docs/algorithms.md, FREE: adaptive threshold): a Beta mixture over the shallow
confidences of the deep passes' (confidence, agreed) pairs, fitted on the host between sequences and handed to the
loop as a traced knob.

One Beta per label (agreed with the deep model or not), fitted by the method of moments; equal mixing
weights; before any data the components are Beta(1, 2) (disagree) and Beta(2, 1) (agree). The threshold is
the smallest point of a 10-point grid on [0.3, 0.9] whose posterior of "agree" exceeds zeta (the reference's
rule: index 10 - the number of such points, clipped to the last). Calibrating costs nothing extra: the pairs
come from passes the decode runs anyway, and refitting stops after the first `FREEZE_AFTER` sequences.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

GRID = np.linspace(0.3, 0.9, 10)
ZETA = 0.4
INITIAL = 0.9
FREEZE_AFTER = 300
_EPS = 1e-4


def fit_beta(x: np.ndarray) -> tuple[float, float]:
    """Method-of-moments (alpha, beta) of samples in (0, 1); uniform Beta(1, 1) when they do not vary."""
    x = np.clip(np.asarray(x, np.float64), _EPS, 1 - _EPS)
    mean, var = x.mean(), x.var()
    if x.size < 2 or var <= 0:
        return 1.0, 1.0
    common = mean * (1 - mean) / var - 1
    return max(mean * common, _EPS), max((1 - mean) * common, _EPS)


def agree_posterior(points, confidences, agreed) -> np.ndarray:
    """P(agree | confidence) at `points` under the two fitted Betas with equal weights."""
    confidences, agreed = np.asarray(confidences, np.float64), np.asarray(agreed, bool)
    agree = fit_beta(confidences[agreed]) if agreed.any() else (2.0, 1.0)
    disagree = fit_beta(confidences[~agreed]) if (~agreed).any() else (1.0, 2.0)
    points = np.clip(np.asarray(points, np.float64), _EPS, 1 - _EPS)
    p_agree, p_disagree = stats.beta.pdf(points, *agree), stats.beta.pdf(points, *disagree)
    return p_agree / np.maximum(p_agree + p_disagree, 1e-300)


def fit(confidences, agreed, zeta: float = ZETA) -> float:
    """The threshold from (confidence, agreed) pairs (module docstring); INITIAL without pairs."""
    if len(confidences) == 0:
        return INITIAL
    count = int(np.sum(agree_posterior(GRID, confidences, agreed) > zeta))
    return float(GRID[min(len(GRID) - count, len(GRID) - 1)])


class Adaptive:
    """Pairs gathered over a run's sequences, refitted at the start of each new batch until FREEZE_AFTER."""

    def __init__(self, zeta: float = ZETA, freeze_after: int = FREEZE_AFTER):
        self.zeta, self.freeze_after = zeta, freeze_after
        self.confidences, self.agreed = [], []
        self.sequences, self.value = 0, INITIAL

    def add(self, confidence: np.ndarray, agreed: np.ndarray, num_tokens: np.ndarray | None = None) -> None:
        """A decode's pairs (`decoding.free.pairs`: [B, W], agreed -1 where no deep pass judged)."""
        confidence, agreed = np.asarray(confidence), np.asarray(agreed)
        judged = agreed >= 0
        if num_tokens is not None:
            judged &= np.arange(agreed.shape[1])[None, :] < np.asarray(num_tokens)[:, None]
        self.confidences.append(confidence[judged])
        self.agreed.append(agreed[judged] == 1)
        self.sequences += agreed.shape[0]

    def threshold(self) -> float:
        """The threshold for the next batch: refitted while fewer than freeze_after sequences were seen."""
        if self.sequences < self.freeze_after and self.confidences:
            self.value = fit(np.concatenate(self.confidences), np.concatenate(self.agreed), self.zeta)
        return self.value
