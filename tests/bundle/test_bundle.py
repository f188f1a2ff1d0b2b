"""The bundle end to end with a tiny real model: built by the bundle stage, copied alone to another folder,
answered through llama.cpp by `slmforge ask` and by `slmforge serve` over real HTTP."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from schemas.errors import ConfigError
from tests.bundle.conftest import PASSAGES
from tests.train.conftest import FACTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def copied(bundle_dir, tmp_path_factory):
    """The bundle copied to a fresh folder, then the workspace it came from deleted: nothing else present."""
    dst = tmp_path_factory.mktemp("elsewhere") / "my-bundle"
    shutil.copytree(bundle_dir, dst)
    return dst


def test_bundle_layout_and_manifest(bundle_dir):
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    assert manifest["default_gguf"] == "tiny-rag-Q8_0.gguf" and manifest["ggufs"] == ["tiny-rag-F16.gguf", "tiny-rag-Q8_0.gguf"]
    assert manifest["index"] == "index" and manifest["retrieval"] == {"k": PASSAGES}
    for name in ("tiny-rag-F16.gguf", "tiny-rag-Q8_0.gguf", "prompt_format.json", "chat_template.jinja", "README.md",
                 "Modelfile"):
        assert name in manifest["files"] and manifest["files"][name]["bytes"] == (bundle_dir / name).stat().st_size
    assert any(f.startswith("index/") for f in manifest["files"])
    card = (bundle_dir / "README.md").read_text()
    assert "## Bundle" in card and manifest["prompt_format"]["fingerprint"] in card
    assert "<|im_start|>" in (bundle_dir / "chat_template.jinja").read_text()
    assert "index/index.json" in manifest["files"] and "index/chunks.parquet" in manifest["files"]
    # hard links: the bundle costs no second copy of the model files
    assert (bundle_dir / "tiny-rag-Q8_0.gguf").stat().st_ino == (bundle_dir.parents[1] / "export" / "tiny-rag-Q8_0.gguf").stat().st_ino


def test_served_prompt_is_token_identical_to_training(bundle_dir, exported):
    """The prompt llama.cpp is given (bundle template + prompt format) equals the training tokenizer's ids."""
    from schemas.prompt_format import PromptFormat
    from train.answer import open_reader
    from train.inputs import load_tokenizer

    tok = load_tokenizer(exported["base"] / "model")
    reader = open_reader(bundle_dir, threads=2)
    try:
        for q, _ in FACTS[:3]:
            messages = PromptFormat().render_messages(q + "?", [p.__dict__ for p in reader.retrieve(q, PASSAGES)])
            want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            assert reader.prompt_ids(messages) == list(want)
    finally:
        reader.close()


def test_bundle_without_index_is_closed_book(exported, tmp_path):
    from tests.train.conftest import make_ctx
    from train.answer import open_reader
    from train.bundle import BundleStage
    from train.bundle_config import BundleConfig

    stats = BundleStage(BundleConfig(default_gguf="F16", max_new_tokens=8, link="copy")).run(
        make_ctx(tmp_path, "bundle", {"export": exported["export"]}))
    assert stats["index"] == "none (closed-book only)" and stats["default_gguf"] == "tiny-rag-F16.gguf"
    folder = tmp_path / "bundle" / "bundle"
    assert "closed-book only" in (folder / "README.md").read_text()
    reader = open_reader(folder, threads=2)
    try:
        with pytest.raises(ConfigError, match="no index"):
            reader.answer("Which port?")
        assert reader.answer("Which port?", closed_book=True).closed_book
    finally:
        reader.close()


def test_an_empty_index_step_fails_the_bundle_clearly(exported, tmp_path):
    from tests.train.conftest import make_ctx
    from train.bundle import BundleStage
    from train.bundle_config import BundleConfig

    (tmp_path / "index").mkdir()
    with pytest.raises(ConfigError, match="no retrieval index found"):
        BundleStage(BundleConfig()).run(make_ctx(tmp_path, "bundle", {"export": exported["export"],
                                                                     "index": tmp_path / "index"}))


def test_answer_length_is_sized_from_the_training_answers(exported, index_dir, tmp_path):
    """(Runs before the test that deletes the export.) max_new_tokens None + the dataset among the inputs: the 0.99 quantile of the training answers' lengths
    (the training tokenizer's count + the end-of-turn token), recorded in bundle.json and the card."""
    from tests.train.conftest import make_ctx
    from train.bundle import BundleStage
    from train.bundle_config import BundleConfig
    from train.generation import quantile
    from train.inputs import load_tokenizer, read_examples

    stats = BundleStage(BundleConfig(link="copy", loop_ngram=8)).run(make_ctx(tmp_path, "bundle", {
        "export": exported["export"], "index": index_dir, "dataset": exported["dataset"]}))
    tok = load_tokenizer(exported["base"] / "model")
    answers = [r["messages"][-1]["content"] for r in read_examples(exported["dataset"], split="train")]
    want = quantile([len(tok(a.strip(), add_special_tokens=False)["input_ids"]) + 1 for a in answers], 0.99)
    llama = json.loads((tmp_path / "bundle" / "bundle" / "bundle.json").read_text())["llama"]
    assert llama["max_new_tokens"] == stats["max_new_tokens"] == want
    assert llama["max_new_tokens_from"]["answers"] == len(answers) and llama["max_new_tokens_from"]["quantile"] == 0.99
    assert llama["loop_ngram"] == 8 and llama["repeat_penalty"] == 1.0 and "warning" not in stats
    card = (tmp_path / "bundle" / "bundle" / "README.md").read_text()
    assert f"at most {want} new tokens (the 0.99 quantile of the {len(answers)} training answers" in card

    stats = BundleStage(BundleConfig(link="copy")).run(make_ctx(tmp_path, "b2", {"export": exported["export"]}))
    assert stats["max_new_tokens"] == 256 and "no dataset among the inputs" in stats["warning"]


def test_ask_from_a_copied_bundle_with_nothing_else(copied, exported, monkeypatch, tmp_path):
    from slmforge.cli import app

    shutil.rmtree(exported["root"] / "export")  # the export the bundle came from is gone
    monkeypatch.chdir(tmp_path)
    q, _ = FACTS[0]
    res = CliRunner().invoke(app, ["ask", "--bundle", str(copied), q + "?", "--threads", "2"])
    assert res.exit_code == 0, res.output
    assert "passages" in res.output and "runbooks/doc0.md" in res.output and "0-" in res.output

    questions = tmp_path / "in.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": q + "?"}) + "\n" for i, (q, _) in enumerate(FACTS[:3])))
    res = CliRunner().invoke(app, ["ask", "-b", str(copied), "--questions", str(questions), "--output",
                                   str(tmp_path / "out.jsonl"), "-k", "2", "--threads", "2"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["q0", "q1", "q2"]
    for line in lines:
        assert {"id", "answer", "citations", "passages"} <= set(line) and len(line["passages"]) == 2
        assert set(line["citations"]) <= {p["source_id"] for p in line["passages"]}
    assert lines[1]["passages"][0]["source_id"] == "runbooks/doc1.md"

    res = CliRunner().invoke(app, ["ask", "-b", str(copied), "--closed-book", q + "?", "--threads", "2"])
    assert res.exit_code == 0 and "closed-book" in res.output


def test_bad_bundles_and_question_files_fail_clearly(copied, tmp_path):
    from slmforge.cli import app
    from train.bundle import open_bundle

    broken = tmp_path / "b"
    shutil.copytree(copied, broken)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "a", "question": "Which port?"}\n{"id": "b", "question": "oops"\n')
    res = CliRunner().invoke(app, ["ask", "-b", str(broken), "--questions", str(questions), "-o", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "line 2: not JSON" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.jsonl").exists()

    (broken / "tiny-rag-Q8_0.gguf").unlink()
    res = CliRunner().invoke(app, ["ask", "-b", str(broken), "Which port?"])
    assert res.exit_code == 2 and "file tiny-rag-Q8_0.gguf is missing" in res.output and "Traceback" not in res.output

    shutil.copy2(copied / "tiny-rag-Q8_0.gguf", broken / "tiny-rag-Q8_0.gguf")
    with open(broken / "tiny-rag-F16.gguf", "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(ConfigError, match="tiny-rag-F16.gguf was changed"):
        open_bundle(broken)


def test_a_changed_prompt_format_is_refused_even_with_a_matching_sha256(copied, tmp_path):
    """Parity check: a prompt_format.json whose fingerprint is not the one the bundle records is refused,
    even when someone also rewrote the file's sha256 in the manifest."""
    from schemas.prompt_format import PromptFormat
    from train.bundle import open_bundle, sha256

    b = tmp_path / "b"
    shutil.copytree(copied, b)
    PromptFormat(passage_template="[{n}] {text}").save(b / "prompt_format.json")
    manifest = json.loads((b / "bundle.json").read_text())
    manifest["files"]["prompt_format.json"] = {"sha256": sha256(b / "prompt_format.json"),
                                               "bytes": (b / "prompt_format.json").stat().st_size}
    (b / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="does not match the fingerprint the model was bundled with"):
        open_bundle(b)


def _post(url, body, key=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_answers_with_the_key_and_refuses_without(copied, tmp_path):
    from slmforge.serve import api_key, make_server
    from train.answer import open_reader

    key, _, _ = api_key(tmp_path / "state")
    reader = open_reader(copied, threads=2)
    server = make_server(reader, key=key, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        url = f"http://{host}:{port}/v1/chat/completions"
        q, _ = FACTS[2]
        body = {"model": "tiny-rag", "messages": [{"role": "user", "content": q + "?"}], "max_tokens": 16}
        status, err = _post(url, body)
        assert status == 401 and "API key" in err["error"]["message"]
        assert _post(url, body, key="sf-wrong")[0] == 401
        status, res = _post(url, body, key=key)
        assert status == 200, res
        assert res["object"] == "chat.completion" and res["choices"][0]["message"]["role"] == "assistant"
        assert res["usage"]["completion_tokens"] <= 16 and res["passages"][0]["source_id"] == "runbooks/doc2.md"
        assert set(res["citations"]) <= {p["source_id"] for p in res["passages"]}
        assert _post(url, {"messages": []}, key=key)[0] == 400
        req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            events = [line[len(b"data: "):] for line in resp.read().splitlines() if line.startswith(b"data: ")]
        assert events[-1] == b"[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip()
        assert streamed == res["choices"][0]["message"]["content"]  # greedy: the same answer as unstreamed
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-1]["citations"] == res["citations"]
        import http.client

        conn = http.client.HTTPConnection(host, port, timeout=10)  # announces 2 MiB; refused before any is read
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("Authorization", f"Bearer {key}")
        conn.putheader("Content-Length", str(2 << 20))
        conn.endheaders()
        assert conn.getresponse().status == 413
        conn.close()
        req = urllib.request.Request(f"http://{host}:{port}/v1/models", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "tiny-rag-Q8_0"
    finally:
        server.shutdown()
        server.server_close()
        reader.close()


def test_workspace_means_the_last_runs_bundle_step(bundle_dir, tmp_path):
    from slmforge.cli import app
    from slmforge.cli_ask import workspace_bundle

    ws = bundle_dir.parent.parent  # <workspace>/<step dir>/bundle, the step dir here being "bundle"
    (ws / "_runs").mkdir(exist_ok=True)
    (ws / "_runs" / "latest.json").write_text(json.dumps({"recipe": None, "steps": [
        {"name": "export", "stage": "export", "kind": "artifact", "fingerprint": "x", "dir": "export", "inputs": []},
        {"name": "bundle", "stage": "bundle", "kind": "artifact", "fingerprint": "y", "dir": "bundle", "inputs": ["export"]}]}))
    assert workspace_bundle(ws) == bundle_dir
    res = CliRunner().invoke(app, ["ask", "-w", str(ws), "--closed-book", "Which port?", "--max-tokens", "4"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["ask", "Which port?"])
    assert res.exit_code == 2 and "--bundle DIR, or -w WORKSPACE" in res.output
    res = CliRunner().invoke(app, ["ask", "-w", str(tmp_path), "Which port?"])
    assert res.exit_code == 2 and "no run found" in res.output


def test_generation_controls_end_a_looping_answer(copied):
    """The tiny model repeats one token until the limit: the loop guard ends it where the repeat began, the
    streamed pieces are exactly the final answer, and the repeat penalty changes what greedy decoding picks."""
    from train.answer import Answer, open_reader

    reader = open_reader(copied, threads=2)
    try:
        q = FACTS[1][0] + "?"
        free = reader.answer(q, max_tokens=40, loop_ngram=0)
        assert free.finish_reason == "length" and free.completion_tokens == 40
        guarded = reader.answer(q, max_tokens=40, loop_ngram=4)
        assert guarded.finish_reason == "loop" and guarded.completion_tokens < 40
        ids = reader.llm.tokenize(guarded.answer.encode(), add_bos=False, special=False)
        assert not any(tuple(ids[i:i + 4]) == tuple(ids[j:j + 4]) for i in range(len(ids)) for j in range(i))
        pieces = list(reader.stream(q, max_tokens=40, loop_ngram=4))
        assert isinstance(pieces[-1], Answer) and "".join(pieces[:-1]).strip() == pieces[-1].answer == guarded.answer
        penalised = reader.answer(q, max_tokens=40, loop_ngram=0, repeat_penalty=1.5)
        assert penalised.answer != free.answer
        assert reader.answer(q).completion_tokens <= json.loads((copied / "bundle.json").read_text())["llama"]["max_new_tokens"]
    finally:
        reader.close()


def test_serve_and_ask_take_the_generation_controls(copied, tmp_path):
    from slmforge.cli import app
    from slmforge.serve import _Error, completion
    from train.answer import open_reader

    reader = open_reader(copied, threads=2)
    try:
        msg = {"messages": [{"role": "user", "content": FACTS[1][0] + "?"}]}
        out = completion(reader, {**msg, "max_tokens": 30, "loop_ngram": 4})
        assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] < 30  # cut: a loop
        out = completion(reader, {**msg, "max_tokens": 30, "loop_ngram": 0, "repeat_penalty": 1.0})
        assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 30
        out = completion(reader, {**msg, "quote": True, "max_tokens": 30})
        assert out["citations"] and out["choices"][0]["message"]["content"].endswith("]")
        for bad in ({"loop_ngram": 1}, {"loop_ngram": "4"}, {"repeat_penalty": 9}, {"max_tokens": True}, {"quote": "yes"}):
            with pytest.raises(_Error) as err:
                completion(reader, {**msg, **bad})
            assert err.value.status == 400
    finally:
        reader.close()
    res = CliRunner().invoke(app, ["ask", "-b", str(copied), FACTS[1][0] + "?", "--threads", "2", "--max-tokens", "30",
                                   "--loop-ngram", "4"])
    assert res.exit_code == 0 and "began to repeat itself" in res.output, res.output
    res = CliRunner().invoke(app, ["ask", "-b", str(copied), "Which port?", "--loop-ngram", "1"])
    assert res.exit_code == 2 and "0 (off) or 2-64" in res.output and "Traceback" not in res.output


def test_quote_answers_with_a_span_of_a_passage(copied, tmp_path):
    """With quote on, the tiny model's answer is a span of one retrieved passage (whitespace runs as one space), cited
    as that passage (the untrained model's own answers are whitespace). ``ask --quote`` takes it."""
    import re

    from slmforge.cli import app
    from train.answer import open_reader

    def norm(s):
        return re.sub(r"\s+", " ", s).strip()

    reader = open_reader(copied, threads=2)
    try:
        spans = 0
        for q, _ in FACTS[:4]:
            ans = reader.answer(q + "?", quote=True, loop_ngram=4)
            body = re.sub(r"\s*\[\d+\]$", "", ans.answer)
            holding = [p.n for p in ans.passages if norm(body) and norm(body) in norm(p.text)]
            if not body.strip():
                assert ans.cited == [] and ans.citations == []
                continue
            spans += 1
            assert holding and ans.cited == [holding[0]], (ans.answer, [p.text for p in ans.passages])
            assert re.search(r"\S \[\d+\]$", ans.answer), ans.answer  # one space before the citation
            assert ans.citations == [ans.passages[holding[0] - 1].source_id]
        assert spans >= 2
    finally:
        reader.close()
    res = CliRunner().invoke(app, ["ask", "-b", str(copied), FACTS[0][0] + "?", "--quote", "--threads", "2"])
    assert res.exit_code == 0 and "passages" in res.output, res.output
