"""Every request body the server reads, declared once, and the one call that reads them.

The models below carry OpenAI's and Ollama's field names and types, the ranges slmrun
enforces, and what unknown fields do: they are ignored, as both APIs ignore them, and
logged once per request. A route reads its body with::

    body = await parse(request, ChatCompletionRequest)

which refuses, before any model is touched, an empty body, one that is not JSON (invalid
UTF-8, a lone surrogate, nesting past the parser's limit) or not an object, and any field
of the wrong type or out of range: a ``RequestError`` (an InvalidArgumentError) carrying
``param``, the dotted path of the first bad field (``messages[0].content``, ``max_tokens``),
which http.error_body turns into a 400 in the API's own shape. Types are strict, as
OpenAI's API is: "5" is not a number, ``true`` is not an integer, NaN and Infinity are not
numbers at all.

Adding an endpoint: declare its body here, a subclass of ``Body`` (``rule("...")`` says a
field's rule in words where pydantic's own message would be vague, as for unions;
``ModelName`` for a model reference), and read it in the route with one call::

    async def embeddings(request):
        body = await schema.parse(request, schema.EmbeddingsRequest)  # typed, or a 400 already

Every served route's body is declared here; tests/fuzzing.py lists each route with a good
request, so the fuzz suite sends it bad ones (and a served route missing from that list fails
tests/test_server_fuzz.py). request.py does the reading and words the errors.

What is checked where: types, required fields and single values' ranges here; what
involves several fields (top_logprobs needs logprobs, a tool_choice naming a tool) in
translate.py, which raises the same RequestError; the runtime's make_params checks the
sampling values again (the library's own guard, for callers that are not the server).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..errors import InvalidArgumentError
from .request import RequestError, Said, bad, extras, parse, rule, shown, validate  # noqa: F401  (parse: the routes' one call)

INT32_MAX = 2**31 - 1


# --- declaring fields -----------------------------------------------------------------------------

def check_model_ref(ref: str) -> str:
    """A model named over the network: a registry or store name (``name``, ``name:quant``,
    ``name:latest``), never a file path; refused before the store is looked at."""
    from ..api import looks_like_path
    from ..registry import split_ref
    from ..store import shown

    ref = ref.strip()
    if not ref:
        return ref  # the server's default model
    if looks_like_path(ref):
        raise InvalidArgumentError(f"{shown(ref)} looks like a file path; only model names are accepted here",
                                   hint="Use a name from `slmrun list` (import a file first with `slmrun import`).")
    split_ref(ref)
    return ref


def _model_ref(ref: str) -> str:
    try:
        return check_model_ref(ref)
    except InvalidArgumentError as exc:
        raise Said(exc.message, hint=exc.hint, as_rule=False) from None


ModelName = Annotated[str, AfterValidator(_model_ref)]
Int = Annotated[int, Field(ge=-2**63, le=2**64 - 1)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(gt=0, le=INT32_MAX)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Stop = Annotated[Optional[str | Annotated[list[str], Field(max_length=16)]], rule("a string or a list of at most 16 strings")]
KeepAlive = Annotated[Optional[float | str], rule('a number of seconds or a duration such as "5m"')]
TokenIds = list[Annotated[int, Field(ge=0, le=INT32_MAX)]]
Speculative = Annotated[Optional[bool | Literal["auto", "on", "off"]], rule('"auto", "on", "off", true or false')]
DryMultiplier = Annotated[float, Field(ge=0.0)]
DryBase = Annotated[float, Field(ge=1.0)]


def ranged(lo: int, hi: int):
    return Annotated[int, Field(ge=lo, le=hi), rule(f"an integer from {lo} to {hi}")]


class Body(BaseModel):
    """Strict types; unknown fields kept aside (``model_extra``) to be logged, never used."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, protected_namespaces=())


# --- OpenAI ---------------------------------------------------------------------------------------

class Sampling(Body):
    """The engine's sampling parameters under OpenAI's names (and llama-server's extensions)."""

    temperature: Optional[Annotated[float, Field(ge=0.0)]] = None
    top_p: Optional[Prob] = None
    top_k: Optional[Annotated[int, Field(ge=0, le=INT32_MAX)]] = None
    min_p: Optional[Prob] = None
    repeat_penalty: Optional[Annotated[float, Field(gt=0.0)]] = None
    presence_penalty: Optional[Penalty] = None
    frequency_penalty: Optional[Penalty] = None
    seed: Optional[Int] = None
    stop: Stop = None
    repeat_last_n: Optional[Annotated[int, Field(ge=-1, le=INT32_MAX)]] = None  # 0: off, -1: the context
    dry_multiplier: Optional[DryMultiplier] = None  # llama-server's DRY sampler (0: off)
    dry_base: Optional[DryBase] = None
    dry_allowed_length: Optional[Annotated[int, Field(ge=0, le=INT32_MAX)]] = None
    dry_penalty_last_n: Optional[Annotated[int, Field(ge=-1, le=INT32_MAX)]] = None
    speculative: Speculative = None  # slmrun's own: prompt-lookup drafts


class LoraEntry(Body):
    """llama-server's per-request adapter: the index of an adapter the model was loaded with."""

    id: Annotated[int, Field(ge=0, le=INT32_MAX)]
    scale: float


Lora = Annotated[Optional[list[LoraEntry]], rule('a list of {"id": N, "scale": X}', deep=True)]


class StreamOptions(Body):
    include_usage: Optional[bool] = None


class OpenAIRequest(Sampling):
    model: Optional[ModelName] = None
    max_tokens: Optional[Count] = None
    max_completion_tokens: Optional[Count] = None
    n: Optional[int] = None
    best_of: Optional[int] = None
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    logit_bias: Optional[dict[str, float]] = None
    suffix: Optional[str] = None
    user: Optional[str] = None  # accepted and unused, as llama-server does
    store: Optional[bool] = None
    metadata: Optional[dict[str, Any]] = None
    service_tier: Optional[str] = None
    lora: Lora = None  # llama-server's: which loaded LoRA adapters, at what scales


class ContentPart(Body):
    type: str
    text: Optional[str] = None


class FunctionCall(Body):
    name: str
    arguments: Annotated[Optional[str | dict[str, Any]], rule("a JSON string or an object")] = None


class ToolCall(Body):
    id: Optional[str] = None
    type: Optional[str] = None
    function: FunctionCall


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Optional[str | list[ContentPart]], rule("a string or a list of text parts")] = None
    name: Optional[str] = None
    tool_call_id: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    refusal: Optional[str] = None


class FunctionDef(Body):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$"), rule("1-64 letters, digits, _ . or -")]
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(Body):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(Body):
    name: str


class ToolChoiceFunction(Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(Body):
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1), rule("a non-empty list", deep=True)]
    logprobs: Optional[bool] = None
    top_logprobs: Optional[ranged(0, 20)] = None
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Annotated[Optional[Literal["auto", "none", "required"] | ToolChoiceFunction],
                           rule('"auto", "none", "required" or {"type": "function", "function": {"name"}}')] = None
    parallel_tool_calls: Optional[bool] = None
    footnotes: Optional[bool] = None  # slmrun's own: a served knowledge base's sources in the text too


Prompt = Annotated[str | list[str] | TokenIds | list[TokenIds],
                   rule("a string, or a list of token ids (one prompt per request)")]


class CompletionRequest(OpenAIRequest):
    prompt: Prompt
    logprobs: Optional[ranged(0, 5)] = None
    echo: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None


EmbeddingInput = Annotated[str | list[str] | TokenIds | list[TokenIds],
                           rule("a string, a list of strings, or token ids (a list, or a list of lists)")]


class EmbeddingsRequest(Body):
    """POST /v1/embeddings (OpenAI)."""

    model: Optional[ModelName] = None
    input: EmbeddingInput
    encoding_format: Optional[Literal["float", "base64"]] = None
    dimensions: Optional[Positive] = None
    user: Optional[str] = None


NonEmptyText = Annotated[str, Field(min_length=1, pattern=r"\S"), rule("a non-empty string")]


class RerankDocument(Body):
    text: NonEmptyText


class RerankRequest(Body):
    """POST /v1/rerank (llama-server's and Jina's shape): results[index, relevance_score].
    A document is a string or Jina's ``{"text": ...}``."""

    model: Optional[ModelName] = None
    query: NonEmptyText
    documents: Annotated[list[Annotated[NonEmptyText | RerankDocument,
                                        rule('a non-empty string or {"text": "..."}')]],
                         Field(min_length=1), rule("a non-empty list", deep=True)]
    top_n: Optional[Positive] = None
    return_documents: Optional[bool] = None


# --- Ollama -----------------------------------------------------------------------------------------

class Options(Sampling):
    """Ollama's options: the sampling ones (the same as OpenAI's fields, above) are used; the
    others are accepted and ignored (those that choose how a model loads are the server's
    command line here). llama-server's DRY options and slmrun's speculative are taken too."""

    num_predict: Optional[Int] = None  # < 0: to the end of the context
    footnotes: Optional[bool] = None  # slmrun's own: a served knowledge base's sources in the text too
    # accepted, not used
    num_ctx: Any = None
    num_batch: Any = None
    num_thread: Any = None
    num_gpu: Any = None
    main_gpu: Any = None
    num_keep: Any = None
    use_mmap: Any = None
    use_mlock: Any = None
    numa: Any = None
    low_vram: Any = None
    vocab_only: Any = None
    f16_kv: Any = None
    logits_all: Any = None
    typical_p: Any = None
    penalize_newline: Any = None
    mirostat: Any = None
    mirostat_tau: Any = None
    mirostat_eta: Any = None
    tfs_z: Any = None


Format = Annotated[Optional[Literal["", "json"] | dict[str, Any]], rule('"json" or a JSON Schema object')]


class OllamaRequest(Body):
    model: Optional[ModelName] = None
    stream: Optional[bool] = None
    keep_alive: KeepAlive = None
    options: Optional[Options] = None
    format: Format = None
    think: Annotated[Optional[bool | str], rule('true, false, "low", "medium" or "high"')] = None
    lora: Lora = None  # llama-server's, taken here too


class OllamaToolCallFunction(Body):
    name: str
    arguments: Annotated[Optional[dict[str, Any] | str], rule("an object")] = None


class OllamaToolCall(Body):
    function: OllamaToolCallFunction


class OllamaMessage(Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[str] = None
    images: Optional[list[str]] = None
    tool_calls: Optional[list[OllamaToolCall]] = None
    tool_name: Optional[str] = None
    thinking: Optional[str] = None


class OllamaChatRequest(OllamaRequest):
    messages: Annotated[list[OllamaMessage], rule("a list", deep=True)] = Field(default_factory=list)
    tools: Optional[list[Tool]] = None
    footnotes: Optional[bool] = None  # slmrun's own: a served knowledge base's sources in the text too


class GenerateRequest(OllamaRequest):
    prompt: Optional[str] = None
    suffix: Optional[str] = None
    images: Optional[list[str]] = None
    system: Optional[str] = None
    template: Optional[str] = None
    context: Annotated[Optional[TokenIds], rule("a list of token ids (from a previous answer)")] = None
    raw: Optional[bool] = None


class NamedRequest(Body):
    """/api/show, /api/delete: ``model`` (or its older name, ``name``)."""

    model: Optional[ModelName] = None
    name: Optional[ModelName] = None
    verbose: Optional[bool] = None


class PullRequest(NamedRequest):
    insecure: Optional[bool] = None
    stream: Optional[bool] = None


class EmbedRequest(Body):
    """POST /api/embed (Ollama)."""

    model: Optional[ModelName] = None
    input: Annotated[Optional[str | list[str]], rule("a string or a list of strings")] = None  # none: []
    truncate: Optional[bool] = None
    dimensions: Optional[Positive] = None
    keep_alive: KeepAlive = None
    options: Optional[Options] = None


class LegacyEmbeddingsRequest(Body):
    """POST /api/embeddings (Ollama's older endpoint: one prompt)."""

    model: Optional[ModelName] = None
    prompt: Optional[str] = None  # none or empty: an empty embedding, as Ollama answers
    keep_alive: KeepAlive = None
    options: Optional[Options] = None


class CreateMessage(Body):
    role: Literal["system", "user", "assistant"]  # a Modelfile's MESSAGE roles
    content: str


class CreateRequest(Body):
    """POST /api/create (Ollama's JSON form): a new model from one in the store (``from``: a
    name, or a path in the store; anywhere with serve --allow-paths) or from uploaded blobs
    (``files``); server/create.py checks the rest (parameters by the Modelfile's table)."""

    model: Optional[ModelName] = None
    name: Optional[ModelName] = None  # Ollama's older name for ``model``
    from_: Optional[str] = Field(None, alias="from")
    system: Optional[str] = None
    template: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    messages: Annotated[Optional[list[CreateMessage]], rule("a list of {role, content}", deep=True)] = None
    adapters: Optional[dict[str, str]] = None
    files: Optional[dict[str, str]] = None
    license: Annotated[Optional[str | list[str]], rule("a string or a list of strings")] = None
    stream: Optional[bool] = None
    # Ollama's, refused by name (slmrun cannot do them) rather than ignored
    quantize: Any = None
    quantization: Any = None
    modelfile: Any = None
    path: Any = None
    draft_files: Any = None
    remote_host: Any = None
    renderer: Any = None
    parser: Any = None


class CopyRequest(Body):
    """POST /api/copy (Ollama)."""

    source: ModelName
    destination: ModelName
