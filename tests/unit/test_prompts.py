"""``tracerl.prompts``: keys, parsing of the ``prompts`` resource and the substitution itself."""

from __future__ import annotations

import pytest

from tracerl.errors import ConfigError
from tracerl.prompts import PromptTable, apply_to_body, prompt_key, substitute


def test_key_is_sha256_of_the_exact_text() -> None:
    # sha256("abc") from FIPS 180-2, appendix B.1
    assert prompt_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert prompt_key("abc ") != prompt_key("abc")


def test_substitute_replaces_first_system_message_and_inserts_demos() -> None:
    demos = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    table = PromptTable.from_value(3, {"prompts": {prompt_key("old"): {"text": "new", "demos": demos}}})
    msgs = [{"role": "system", "content": "old", "name": "s"}, {"role": "user", "content": "hi"}]
    out, key, n = substitute(msgs, table)
    assert out == [{"role": "system", "content": "new", "name": "s"}, *demos, {"role": "user", "content": "hi"}]
    assert (key, n) == (prompt_key("old"), 2)
    assert msgs[0]["content"] == "old"  # the client's list is not changed
    later = [{"role": "user", "content": "x"}, {"role": "system", "content": "old"}]
    assert substitute(later, table) == (later, None, 0)  # only a leading system message is a system prompt
    body = {"model": "m", "messages": msgs}
    new, info = apply_to_body(body, table)
    assert new["messages"][0]["content"] == "new" and new["model"] == "m"
    assert info == {"version": 3, "key": prompt_key("old"), "demos": 2} and body["messages"] is msgs
    assert apply_to_body(body, None) == (body, None)


@pytest.mark.parametrize(("value", "message"), [
    ({"other": 1}, "must hold"),
    ({"prompts": {"k": {"demos": []}}}, "needs a 'text' string"),
    ({"prompts": {"k": {"text": "t", "demos": [{"role": "assistant", "content": "a"}]}}}, r"demos\[0\] must be"),
    ({"prompts": {"k": {"text": "t", "demos": [{"role": "user", "content": "q"}]}}}, "end with a user turn"),
])  # fmt: skip
def test_bad_prompts_values_are_refused_with_the_reason(value: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PromptTable.from_value(1, value)
