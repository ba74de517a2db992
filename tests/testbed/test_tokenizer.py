import string

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from align.testbed.tokenizer import CHARACTERS, SPECIAL_TOKENS, build_tokenizer, chat_text

TOK = build_tokenizer()


@settings(max_examples=200, deadline=None, derandomize=True)  # CI must not draw new cases
@given(st.text(alphabet=CHARACTERS, max_size=60))
def test_round_trip_one_id_per_character(text):
    # text spelling a special token ("<eos>") is that token, as in every HF tokenizer
    assume(not any(special in text for special in SPECIAL_TOKENS))
    ids = TOK(text)["input_ids"]
    assert ids[0] == TOK.bos_token_id  # plain calls add <bos>, like Llama tokenizers
    assert len(ids) == len(text) + 1
    assert TOK.decode(ids, skip_special_tokens=True) == text
    assert TOK.decode(ids[1:]) == text


def test_specials_and_padding_side():
    assert (TOK.bos_token, TOK.eos_token, TOK.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert len({TOK.bos_token_id, TOK.eos_token_id, TOK.pad_token_id}) == 3
    assert TOK.padding_side == "left"
    batch = TOK(["1+1=", "123+456="], padding=True)["input_ids"]
    assert batch[0][:4] == [TOK.pad_token_id] * 4 and batch[0][4] == TOK.bos_token_id
    assert TOK.convert_ids_to_tokens(TOK("a\nb")["input_ids"]) == ["<bos>", "a", "\n", "b"]


def test_chat_template_renders_aligned_format():
    messages = [{"role": "user", "content": "37+485="}, {"role": "assistant", "content": "522"}]
    assert TOK.apply_chat_template(messages, tokenize=False) == "<bos><|user|>37+485=<|assistant|>522<eos>"
    assert chat_text("37+485=", "522") == TOK.apply_chat_template(messages, tokenize=False)
    prompt = TOK.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == chat_text("37+485=") == "<bos><|user|>37+485=<|assistant|>"
    enc = TOK.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    # exactly the answer and its <eos> are assistant tokens: what completion-only SFT trains on
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert TOK.decode(masked) == "522<eos>"
    # one <bos> only: the template writes it and apply_chat_template adds no second one
    assert enc["input_ids"].count(TOK.bos_token_id) == 1


def test_multi_turn_and_system_and_bad_role():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "2+2="},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Check again."},
    ]
    text = TOK.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<bos><|system|>be brief<|user|>2+2=<|assistant|>5<eos><|user|>Check again.<|assistant|>"
    try:
        TOK.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    except Exception as err:  # jinja raise_exception surfaces as TemplateError
        assert "unknown role tool" in str(err)
    else:
        raise AssertionError("unknown role accepted")


def test_save_and_reload_with_auto_tokenizer(tmp_path):
    TOK.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = string.ascii_letters + string.digits + " +-=?"
    assert again(text)["input_ids"] == TOK(text)["input_ids"]
    assert again.padding_side == "left"
    assert again.apply_chat_template([{"role": "user", "content": "1+2="}], tokenize=False, add_generation_prompt=True) == chat_text("1+2=")
