"""The engine through the real embedded GGUF and llama.cpp."""

from __future__ import annotations

import json

from assistant.context import fit_messages
from assistant.engine import GenParams, chat

SYSTEM = {"role": "system", "content": "Answer the user's question concisely and accurately."}


def ask(engine, question: str, **params) -> str:
    msgs = [SYSTEM, {"role": "user", "content": question}]
    return chat(engine, msgs, GenParams(max_tokens=48, **params)).result().text


def test_default_model_knows_the_capital_of_france(engine):
    assert "Paris" in ask(engine, "What is the capital of France?")


def test_chat_template_comes_from_the_gguf(engine):
    prompt = engine.render([SYSTEM, {"role": "user", "content": "Hi"}])
    # SmolLM2 ships a ChatML template: the rendered prompt uses its markers and ends ready for the reply
    assert "<|im_start|>user\nHi<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_streaming_equals_non_streamed_at_the_same_seed(engine):
    msgs = [SYSTEM, {"role": "user", "content": "Name three colours of the rainbow."}]
    params = GenParams(temperature=0.8, seed=1234, max_tokens=40)
    pieces = list(chat(engine, msgs, params))
    whole = chat(engine, msgs, params).result().text
    assert len(pieces) > 3
    assert "".join(pieces) == whole


def test_stop_sequences_and_max_tokens(engine):
    msgs = [SYSTEM, {"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    free = chat(engine, msgs, GenParams(max_tokens=60)).result()
    assert "5" in free.text
    stopped = chat(engine, msgs, GenParams(max_tokens=60, stop=["5"])).result()
    assert "5" not in stopped.text and len(stopped.text) < len(free.text)
    short = chat(engine, msgs, GenParams(max_tokens=4)).result()
    assert short.completion_tokens <= 4 and short.finish_reason == "length"


def test_cancel_keeps_the_partial_answer(engine):
    msgs = [SYSTEM, {"role": "user", "content": "Write a long story about a nightjar."}]
    generation = chat(engine, msgs, GenParams(max_tokens=200))
    seen = []
    for piece in generation:
        seen.append(piece)
        if len(seen) == 5:
            generation.cancel()
    result = generation.result()
    assert result.finish_reason == "cancelled"
    assert result.text == "".join(seen) and result.completion_tokens <= 8


def test_json_schema_constrained_generation_parses(engine):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            "population_millions": {"type": "number"},
        },
        "required": ["city", "country", "population_millions"],
    }
    msgs = [
        SYSTEM,
        {"role": "user", "content": "Describe Paris as JSON with city, country, population_millions."},
    ]
    text = chat(engine, msgs, GenParams(max_tokens=80), json_schema=schema).result().text
    data = json.loads(text)
    assert set(data) == {"city", "country", "population_millions"}
    assert isinstance(data["city"], str) and isinstance(data["population_millions"], int | float)


def test_gbnf_grammar_constrains_output(engine):
    grammar = 'root ::= ("yes" | "no")'
    msgs = [SYSTEM, {"role": "user", "content": "Is Paris in France? Answer yes or no."}]
    assert chat(engine, msgs, GenParams(max_tokens=5), grammar=grammar).result().text in ("yes", "no")


def test_token_counting_matches_the_tokenizer(engine):
    text = "Nightjars are nocturnal birds."
    assert engine.count_tokens(text) == len(engine.llm.tokenize(text.encode(), add_bos=False, special=True))
    assert engine.count_tokens(text + " " + text) > engine.count_tokens(text)


def test_long_conversation_is_trimmed_and_still_answered(engine):
    filler = "This is an earlier remark about gardening, compost and tomatoes. " * 12
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"{i}: {filler}"}, {"role": "assistant", "content": "Noted."}]
    msgs = [SYSTEM, *history, {"role": "user", "content": "What is the capital of Japan?"}]
    assert engine.count_tokens(engine.render(msgs)) > engine.n_ctx  # really longer than the context
    fitted = fit_messages(engine, msgs, reserve=64)
    assert fitted.dropped_turns > 0 and fitted.notice
    assert fitted.messages[0] == SYSTEM and fitted.messages[-1] == msgs[-1]
    assert fitted.messages[1]["role"] == "user"
    assert engine.count_tokens(engine.render(fitted.messages)) <= engine.n_ctx - 64
    answer = chat(engine, fitted.messages, GenParams(max_tokens=32)).result().text
    assert "Tokyo" in answer


def test_an_overlong_single_message_is_cut_not_crashed(engine):
    msgs = [SYSTEM, {"role": "user", "content": "blah " * 5000 + "What is the capital of France?"}]
    fitted = fit_messages(engine, msgs, reserve=64)
    assert fitted.truncated and fitted.messages[-1]["content"].endswith("What is the capital of France?")
    assert engine.count_tokens(engine.render(fitted.messages)) <= engine.n_ctx - 64
