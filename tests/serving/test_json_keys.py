"""Repeated keys in a JSON body, found by counting colons and the keys a request holds."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, RootModel

from modelcycle.serving.adapter import RequestError
from modelcycle.serving.json_keys import keys_held, refuse_repeated_keys


class Note(BaseModel):
    text: str
    tags: dict[str, int] = {}


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")

    notes: list[Note]


class Strictless(BaseModel):  # extra keys ignored: the request holds fewer keys than the body
    text: str


Scores = RootModel[dict[str, float]]


@pytest.mark.parametrize(
    ("model", "body", "repeated"),
    [
        (Loose, '{"notes": [{"text": "a: b", "tags": {"x": 1}}]}', None),  # a colon in text
        (Loose, '{"notes": [{"text": "a: b", "tags": {"x": 1, "x": 2}}]}', "x"),
        (Loose, '{"notes": [], "more": {"k": 1, "k": 2}}', "k"),  # an extra key's object
        (Loose, '{"notes": [{"text": "t", "text": "u"}]}', "text"),  # in a list's object
        (Strictless, '{"text": "t", "ignored": {"y": 1}}', None),
        (Strictless, '{"text": "t", "ignored": {"y": 1, "y": 1}}', "y"),
        (Scores, '{"p": 1, "q": 2}', None),
        (Scores, '{"p": 1, "p": 2}', "p"),  # a root dict: "root" is no key of the body
    ],
)
def test_a_repeated_key_is_named_wherever_it_is(
    model: type[BaseModel], body: str, repeated: str | None
) -> None:
    request = model.model_validate_json(body)
    if repeated is None:
        refuse_repeated_keys(body.encode(), request)
        return
    with pytest.raises(RequestError, match=f"^The key '{repeated}' is given twice"):
        refuse_repeated_keys(body.encode(), request)


def test_the_keys_a_request_holds_are_counted_without_walking_a_dict_of_numbers() -> None:
    notes = '[{"text": "t", "tags": {"a": 1, "b": 2}}, {"text": "u"}]'
    request = Loose.model_validate_json(f'{{"notes": {notes}, "extra": {{"e": [{{"f": 1}}]}}}}')
    # notes, extra; text, tags, a, b; text; e, f
    assert keys_held(request) == 9
