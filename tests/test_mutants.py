"""The mutant catalogue (tests/mutants.py) stays in step with the code: every mutant still breaks the rule it
names, so `python -m tests.mutants` keeps proving that the fast tests catch those faults."""

from tests import mutants


def test_every_mutant_applies_to_the_current_code():
    assert mutants.stale() == {}

def test_every_mutant_changes_its_file_and_names_existing_tests():
    for name, m in mutants.MUTANTS.items():
        assert m.old != m.new, name
        for test in m.tests.split():
            assert (mutants.ROOT / test.split("::")[0]).is_file(), (name, test)
