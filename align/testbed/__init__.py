"""The offline testbed: a character tokenizer, an arithmetic task with gold answers, and a family
of tiny Llama models (small/large x base/instruct) built locally and cached."""

from .arithmetic import Problem, eval_problems, gold_reward, parse_answer, sample_problems, split_of
from .build import PROFILES, Testbed, build_testbed, build_variant, capability_checks, load_testbed, testbed_dir, testbed_of
from .tokenizer import build_tokenizer, chat_text

__all__ = [
    "PROFILES",
    "Problem",
    "Testbed",
    "build_testbed",
    "build_tokenizer",
    "build_variant",
    "capability_checks",
    "chat_text",
    "eval_problems",
    "gold_reward",
    "load_testbed",
    "parse_answer",
    "sample_problems",
    "split_of",
    "testbed_dir",
    "testbed_of",
]
