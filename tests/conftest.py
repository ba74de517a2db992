import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("alignkit-cache")


@pytest.fixture(scope="session")
def tiny_testbed(cache_dir):
    """The tiny testbed profile, built once per test session (a few seconds)."""
    from align.testbed import build_testbed

    return build_testbed("tiny", seed=0, cache_dir=cache_dir, workers=1, show_progress=False)


@pytest.fixture(scope="session", params=["tiny", "tiny-bpe"])
def testbed(request, cache_dir):
    """Each testbed flavour in turn: characters with <bos>/<eos>/<pad>, and byte-level BPE with
    ChatML, no pad token, two EOS ids and dropout (what a real checkpoint looks like). Modules that
    run their whole matrix on both override ``tiny_testbed`` with this."""
    from align.testbed import build_testbed

    return build_testbed(request.param, seed=0, cache_dir=cache_dir, workers=1, show_progress=False)
