import pytest


@pytest.fixture(scope="module")
def tiny_testbed(testbed):
    """Every decoding test runs on both testbed flavours (char, and BPE with ChatML, no pad token,
    two EOS ids): ``testbed`` is parametrised over them in ``tests/conftest.py``."""
    return testbed
