"""The Ollama Modelfile is derived from the chat template, and renders what llama.cpp and training render.

Ollama is not installable here (not on PyPI or Debian), so its TEMPLATE is rendered by ``go_render`` below, a
small renderer of the Go ``text/template`` subset the Modelfile uses (text, ``{{ "quoted" }}``, ``.Content``,
``.Role``, ``range .Messages``, ``if/else if eq .Role "x"``, ``end``, ``{{-``/``-}}`` trimming), checked against
real Go when a Go toolchain is on the PATH. Then, per tokenizer family: the TEMPLATE renders every conversation
exactly as the jinja template does (BOS left to llama.cpp), llama.cpp tokenizes that to the training ids with
BOS once, llama.cpp's own template engine renders the same text, and every stop token ends generation in
llama.cpp."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.train.archs_util import build_model, chat_ids, conversations, open_llama, tokenizer

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _tokens(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], with Go's trim markers applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        out += [("text", text), ("action", m.group(2))]
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    return out + [("text", tail.lstrip(" \t\r\n") if trim_next else tail)]


def _parse(tokens: list[tuple[str, str]], i: int = 0, stop=("end",)):
    """A node list up to a closing keyword; returns (nodes, index of the closing token, its text)."""
    nodes = []
    while i < len(tokens):
        kind, s = tokens[i]
        if kind == "text":
            nodes.append(("text", s))
            i += 1
            continue
        if s == "end" or s.startswith("else"):
            return nodes, i, s
        if s.startswith("range "):
            body, i, _ = _parse(tokens, i + 1)
            nodes.append(("range", s[6:].strip(), body))
            i += 1
        elif s.startswith("if "):
            branches, cond = [], s[3:].strip()
            while True:
                body, i, closing = _parse(tokens, i + 1)
                branches.append((cond, body))
                if closing == "end":
                    break
                cond = closing[len("else"):].strip().removeprefix("if").strip() or None
            nodes.append(("if", branches))
            i += 1
        else:
            nodes.append(("print", s))
            i += 1
    return nodes, i, None


def _value(expr: str, dot):
    if expr.startswith('"'):
        return json.loads(expr)
    if expr.startswith("."):
        return dot[expr[1:]] if expr != "." else dot
    raise ValueError(f"unsupported Go template expression {expr!r}")


def _cond(expr: str, dot) -> bool:
    m = re.fullmatch(r'eq\s+(\S+)\s+(".*")', expr)
    if not m:
        raise ValueError(f"unsupported Go template condition {expr!r}")
    return _value(m.group(1), dot) == _value(m.group(2), dot)


def _exec(nodes, dot) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            out.append(str(_value(node[1], dot)))
        elif node[0] == "range":
            out += [_exec(node[2], item) for item in _value(node[1], dot)]
        else:
            out.append(next((_exec(body, dot) for cond, body in node[1] if cond is None or _cond(cond, dot)), ""))
    return "".join(out)


def go_render(template: str, messages: list[dict[str, str]]) -> str:
    nodes, _, _ = _parse(_tokens(template))
    return _exec(nodes, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]})


GO_PROGRAM = """package main
import ("encoding/json"; "os"; "text/template")
type M struct { Role string; Content string }
func main() {
    var in struct { Template string; Messages []M }
    if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil { panic(err) }
    t := template.Must(template.New("m").Parse(in.Template))
    if err := t.Execute(os.Stdout, map[string]any{"Messages": in.Messages}); err != nil { panic(err) }
}
"""


def test_go_renderer_subset():
    t = '{{- range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }}\n{{- else if eq .Role "assistant" }} A:' \
        '{{ .Content }}{{ "\\n" }}{{ else }}?{{ end }}{{ end -}}\n  done'
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "tool", "content": "x"}]
    assert go_render(t, msgs) == "U:hi A:yo\n?done"


@pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain: the Python renderer alone is used")
def test_go_renderer_agrees_with_go(tmp_path):
    from train.modelfile import derive_template, go_template

    (tmp_path / "main.go").write_text(GO_PROGRAM)
    env = {"GOCACHE": str(tmp_path / "cache"), "HOME": str(tmp_path), "PATH": shutil.os.environ["PATH"],
           "GO111MODULE": "off", "GOFLAGS": "-mod=mod"}
    subprocess.run(["go", "build", "-o", str(tmp_path / "render"), str(tmp_path / "main.go")], check=True, env=env,
                   cwd=tmp_path, capture_output=True)
    for family in ("gpt2", "llama3", "gemma", "phi3"):
        template = go_template(derive_template(tokenizer(family)))
        for conv in conversations():
            msgs = conv[:-1]
            out = subprocess.run([str(tmp_path / "render")], input=json.dumps({"Template": template, "Messages": [
                {"Role": m["role"], "Content": m["content"]} for m in msgs]}), capture_output=True, text=True, check=True)
            assert out.stdout == go_render(template, msgs), family


#: family -> transformers config prefix of a model that uses it
FAMILIES = {"gpt2": "Llama", "llama3": "Llama", "qwen": "Qwen2", "gemma": "Gemma3Text", "mistral": "Mistral",
            "phi3": "Phi3"}
GEMMA = {"num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_file(request, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from train.gguf_export import write_gguf
    from train.modelfile import ollama_modelfile

    family = request.param
    tok = tokenizer(family)
    model = build_model(FAMILIES[family], tok, **(GEMMA if family == "gemma" else {}))
    path = tmp_path_factory.mktemp(family) / "m-F16.gguf"
    info = write_gguf(model, tok, path, quant="F16", name="tiny")
    modelfile = ollama_modelfile(gguf_name=path.name, tokenizer=tok, system="Answer from the runbooks.")
    llm = open_llama(path)
    yield {"family": family, "tok": tok, "info": info, "modelfile": modelfile, "llm": llm}
    llm.close()


def _template(modelfile: str) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1)


def _stops(modelfile: str) -> list[str]:
    return [json.loads(s) for s in re.findall(r"^PARAMETER stop (.*)$", modelfile, re.M)]


def _prompts(modelfile: str):
    """Conversations as Ollama gets them: ending with the user's turn, a reply asked for; contents trimmed where
    the Modelfile says the template trims (a Go template cannot)."""
    trim = "trims message content" in modelfile
    return [[{**m, "content": m["content"].strip() if trim else m["content"]} for m in c[:-1]]
            for c in conversations() if c[-1]["role"] == "assistant"]


def test_template_renders_like_the_chat_template_bos_once(family_file):
    tok, llm, template = family_file["tok"], family_file["llm"], _template(family_file["modelfile"])
    bos = tok.bos_token if family_file["info"]["add_bos_token"] else ""
    generation = family_file["family"] != "mistral"  # the Mistral template has no generation prompt
    for msgs in _prompts(family_file["modelfile"]):
        text, ids = chat_ids(tok, msgs, generation_prompt=generation)
        ollama = go_render(template, msgs)
        assert bos + ollama == text, family_file["family"]
        # Ollama tokenizes its rendering with llama.cpp, adding BOS per the file: the training ids, BOS once
        assert llm.tokenize(ollama.encode(), add_bos=True, special=True) == ids


def test_llama_cpp_renders_the_same_conversation(family_file):
    """llama.cpp's own template engine (``llama_chat_apply_template`` over the template stored in the GGUF)."""
    if family_file["family"] == "mistral":
        pytest.skip("llama.cpp's built-in Mistral formats put spaces of their own; this template is not one of them")
    llm, template = family_file["llm"], _template(family_file["modelfile"])
    stored = llm.metadata["tokenizer.chat_template"].encode()
    for msgs in _prompts(family_file["modelfile"]):
        if family_file["family"] == "gemma" and msgs[0]["role"] == "system":
            # llama.cpp's built-in Gemma format folds a system turn into the first user turn (as Google's template
            # does); train.chat.GEMMA_TEMPLATE renders it as a turn of its own. Jinja-based paths (llama-cpp-python,
            # llama-server --jinja) and the Modelfile follow the stored template; see docs/train.md.
            assert _builtin(stored, msgs) != go_render(template, msgs)
            msgs = msgs[1:]
        assert _builtin(stored, msgs) == go_render(template, msgs), family_file["family"]


def _builtin(stored: bytes, msgs: list[dict[str, str]]) -> str:
    import ctypes

    import llama_cpp

    chat = (llama_cpp.llama_chat_message * len(msgs))(
        *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in msgs])
    buf = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_chat_apply_template(stored, chat, len(msgs), True, buf, len(buf))
    assert n > 0, "llama.cpp does not recognise the template"
    return buf.raw[:n].decode()


def test_stop_tokens_end_generation_in_llama_cpp(family_file):
    import llama_cpp

    llm, stops = family_file["llm"], _stops(family_file["modelfile"])
    eot = family_file["tok"].convert_ids_to_tokens([family_file["info"]["end_of_turn_token_id"]])[0]
    assert stops and stops[0] == eot  # the token the template ends an answer with comes first
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for stop in stops:
        ids = llm.tokenize(stop.encode(), add_bos=False, special=True)
        assert len(ids) == 1 and llama_cpp.llama_vocab_is_eog(vocab, ids[0]), (stop, ids)


def test_modelfile_states_what_go_cannot_do(family_file):
    modelfile = family_file["modelfile"]
    trims = family_file["family"] in ("llama3", "gemma")  # their templates apply `| trim` to message content
    assert ("trims message content" in modelfile) == trims
    assert 'SYSTEM """Answer from the runbooks."""' in modelfile and "PARAMETER temperature 0" in modelfile


def test_a_template_that_does_not_decompose_gets_no_template_line():
    from train.modelfile import NotDerivable, derive_template, ollama_modelfile

    tok = tokenizer("gemma")
    folded = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% set sys = m['content'] %}"
              "{% elif loop.index0 == 1 and sys is defined %}<start_of_turn>user\n{{ sys }}\n\n{{ m['content'] }}"
              "<end_of_turn>\n{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
              "{{ m['content'] }}<end_of_turn>\n{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    with pytest.raises(NotDerivable):
        derive_template(tok, folded)
    modelfile = ollama_modelfile(gguf_name="x.gguf", tokenizer=tok, system=None, template=folded)
    assert "TEMPLATE" not in modelfile.replace("# No TEMPLATE", "") and "# No TEMPLATE" in modelfile
