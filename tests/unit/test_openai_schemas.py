"""The LLM API's OpenAPI document says what the server accepts (llmops.llm.openai_schemas): each
parameter the server does not implement is documented at exactly the values it takes."""

import pytest

from llmops.llm.openai_api import ApiError, check_supported
from llmops.llm.openai_schemas import UNSUPPORTED, ChatRequest, CompletionRequest, openapi_document

SMALLEST = {
    ChatRequest: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    CompletionRequest: {"model": "m", "prompt": "hi"},
}


@pytest.mark.parametrize("request_model", [ChatRequest, CompletionRequest])
def test_unsupported_parameters_are_documented_at_the_values_the_server_takes(request_model):
    schemas = openapi_document(model_name="m", max_tokens=64)["components"]["schemas"]
    properties = schemas[request_model.__name__]["properties"]
    documented = {name: p["enum"] for name, p in properties.items() if name in UNSUPPORTED}
    assert set(documented) == set(UNSUPPORTED) & set(request_model.model_fields)
    for name, values in documented.items():
        assert values and (None in values) == bool(properties[name].get("nullable"))
        for value in values:  # validated and supported: no ApiError
            check_supported(request_model.model_validate(SMALLEST[request_model] | {name: value}))
    with pytest.raises(ApiError, match="n: 2 is not supported"):
        check_supported(request_model.model_validate(SMALLEST[request_model] | {"n": 2}))
    assert properties["model"]["enum"] == ["m"] and properties["max_tokens"]["maximum"] == 64


def test_logprobs_is_documented_in_each_requests_own_type():
    schemas = openapi_document()["components"]["schemas"]
    assert schemas["ChatRequest"]["properties"]["logprobs"]["enum"] == [None, False]
    assert schemas["CompletionRequest"]["properties"]["logprobs"]["enum"] == [None, 0]
