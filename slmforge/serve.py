"""``slmforge serve``: an OpenAI-compatible chat endpoint for a bundle, on 127.0.0.1 only.

``POST /v1/chat/completions`` retrieves passages with the last user message, renders the bundle's prompt
format and generates with llama.cpp (greedy, so ``temperature``/``top_p`` are ignored); the response is
OpenAI's ``chat.completion`` object plus ``citations`` and ``passages`` (``stream: true``: server-sent
``chat.completion.chunk`` events, the last one with ``citations`` and ``passages``). ``GET /v1/models``
lists the bundle's model. ``max_tokens`` (or ``max_completion_tokens``) overrides the bundle's answer length.
Extension fields of a request: ``k`` (passages), ``closed_book``, ``repeat_penalty``, ``loop_ngram`` and ``quote``
(the bundle's generation controls, train/generation.py).

Every request needs ``Authorization: Bearer <key>``. The key is random (32 bytes), made on the first serve
and stored 0600 in a 0700 folder (``$XDG_STATE_HOME/slmforge`` or ``~/.local/state/slmforge``); it is
printed once, when it is made, and never appears in a URL or a command line. The standard library's
``ThreadingHTTPServer``; bodies over 1 MiB are refused. Library code: nothing here prints.
"""

from __future__ import annotations

import hmac
import itertools
import json
import os
import secrets
import stat
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, SlmforgeError

HOST = "127.0.0.1"
MAX_BODY = 1 << 20
KEY_FILE = "api_key"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "slmforge"


def api_key(folder: Path | None = None) -> tuple[str, Path, bool]:
    """The serve key, made on first use: (key, file, created). A key file others can read is refused."""
    folder = Path(folder or state_dir())
    path = folder / KEY_FILE
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"the API key file {path} can be read by other users", received=oct(mode), expected="0o600",
                              fix=f"chmod 600 {path} (or delete it: a new key is made on the next serve)")
        key = path.read_text().strip()
        if len(key) >= 32:
            return key, path, False
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    key = "sf-" + secrets.token_urlsafe(32)
    tmp = folder / f".{KEY_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.replace(tmp, path)
    return key, path, True


class _Error(Exception):
    def __init__(self, status: HTTPStatus, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _messages(body: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """Earlier user/assistant turns and the last user message (the question) of an OpenAI request."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _Error(HTTPStatus.BAD_REQUEST, "'messages' must be a non-empty list of {role, content}")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise _Error(HTTPStatus.BAD_REQUEST, f"messages[{i}]: expected {{role: system|user|assistant, content: str}}")
        if m["role"] != "system":  # the bundle's prompt format supplies the system text the model was trained with
            turns.append({"role": m["role"], "content": m["content"]})
    if not turns or turns[-1]["role"] != "user":
        raise _Error(HTTPStatus.BAD_REQUEST, "the last message must be the user's question")
    return turns[:-1], turns[-1]["content"]


def _request(reader, body: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``Reader.answer``/``stream`` for an OpenAI request body (400 on bad fields)."""
    history, question = _messages(body)
    k, closed = body.get("k"), bool(body.get("closed_book", False))
    if k is not None and (not isinstance(k, int) or not 1 <= k <= 64):
        raise _Error(HTTPStatus.BAD_REQUEST, "'k' must be an integer 1-64")
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise _Error(HTTPStatus.BAD_REQUEST, "'max_tokens' must be a positive integer")
    penalty, ngram = body.get("repeat_penalty"), body.get("loop_ngram")
    if penalty is not None and (not isinstance(penalty, (int, float)) or isinstance(penalty, bool)):
        raise _Error(HTTPStatus.BAD_REQUEST, "'repeat_penalty' must be a number 0.5-2.0 (1.0: none)")
    if ngram is not None and (not isinstance(ngram, int) or isinstance(ngram, bool)):
        raise _Error(HTTPStatus.BAD_REQUEST, "'loop_ngram' must be an integer: 0 (off) or 2-64")
    quote = body.get("quote")
    if quote is not None and not isinstance(quote, bool):
        raise _Error(HTTPStatus.BAD_REQUEST, "'quote' must be true or false")
    try:  # the ranges, checked by the same code as ask's flags
        reader.generation.override(max_tokens=max_tokens, repeat_penalty=penalty, loop_ngram=ngram)
    except SlmforgeError as exc:
        raise _Error(HTTPStatus.BAD_REQUEST, str(exc)) from None
    # a bundle without an index answers closed-book (said in its card and in /v1/models)
    return {"question": question, "history": history, "k": k, "max_tokens": max_tokens,
            "repeat_penalty": penalty, "loop_ngram": ngram, "quote": quote, "closed_book": closed or not reader.has_index}


def _extras(ans) -> dict[str, Any]:
    return {"citations": ans.citations, "closed_book": ans.closed_book,
            "passages": [{"n": p.n, "source_id": p.source_id, "chunk_id": p.chunk_id, "span": list(p.span),
                          "score": p.score, "text": p.text} for p in ans.passages]}


def _finish(ans) -> str:
    return "length" if ans.finish_reason == "length" else "stop"


def completion(reader, body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI ``chat.completion`` for a request body, with ``citations`` and ``passages``."""
    try:
        ans = reader.answer(**_request(reader, body))
    except SlmforgeError as exc:
        raise _Error(HTTPStatus.BAD_REQUEST, exc.message) from None
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": reader.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.answer}, "finish_reason": _finish(ans)}],
        "usage": {"prompt_tokens": ans.prompt_tokens, "completion_tokens": ans.completion_tokens,
                  "total_tokens": ans.prompt_tokens + ans.completion_tokens},
        **_extras(ans),
    }


def completion_chunks(reader, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """OpenAI ``chat.completion.chunk`` objects of a streamed answer; the last one carries ``finish_reason``,
    ``citations`` and ``passages``. Bad fields raise before the first chunk."""
    pieces = reader.stream(**_request(reader, body))
    try:
        first = next(pieces)
    except SlmforgeError as exc:
        raise _Error(HTTPStatus.BAD_REQUEST, exc.message) from None
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": reader.model_name}
    yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    for piece in itertools.chain([first], pieces):
        if isinstance(piece, str):
            yield {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        else:
            yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(piece)}], **_extras(piece)}


def make_handler(reader, key: str) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {key}".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "slmforge"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            import logging

            logging.getLogger("slmforge.serve").info("%s %s", self.address_string(), format % args)

        def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Bearer realm="slmforge"')
            self.end_headers()
            self.wfile.write(data)

        def _error(self, err: _Error) -> None:
            self._send(err.status, {"error": {"message": err.message, "type": err.kind, "code": int(err.status)}})

        def _authorised(self) -> bool:
            given = (self.headers.get("Authorization") or "").encode()
            if hmac.compare_digest(given, expected):
                return True
            self.close_connection = True  # the body, if any, is not read
            self._error(_Error(HTTPStatus.UNAUTHORIZED, "missing or wrong API key: send 'Authorization: Bearer <key>' "
                               "(the key printed by the first 'slmforge serve', stored 0600 in its state folder)",
                               "authentication_error"))
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if not self._authorised():
                return
            if self.path.rstrip("/") != "/v1/models":
                return self._error(_Error(HTTPStatus.NOT_FOUND, f"no such endpoint: GET {self.path}", "not_found"))
            self._send(HTTPStatus.OK, {"object": "list", "data": [
                {"id": reader.model_name, "object": "model", "created": 0, "owned_by": "slmforge",
                 "retrieval": reader.has_index}]})

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorised():
                return
            try:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    raise _Error(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {self.path}", "not_found")
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    raise _Error(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
                if length > MAX_BODY:
                    self.close_connection = True
                    raise _Error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise _Error(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
                if not isinstance(body, dict):
                    raise _Error(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
                if body.get("stream"):
                    return self._stream(completion_chunks(reader, body))
                self._send(HTTPStatus.OK, completion(reader, body))
            except _Error as err:
                self._error(err)

        def _stream(self, chunks: Iterator[dict[str, Any]]) -> None:
            """Server-sent events, one ``data:`` line per chunk, then ``data: [DONE]``; the connection closes at the
            end (no chunked transfer encoding)."""
            first = next(chunks)  # raises _Error before any header is sent
            self.close_connection = True
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for chunk in itertools.chain([first], chunks):
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away; closing the generator ends the generation
            finally:
                chunks.close()

    return Handler


def make_server(reader, *, key: str, port: int = 8000) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1:``port`` (0: any free port); call ``serve_forever()``."""
    try:
        server = ThreadingHTTPServer((HOST, port), make_handler(reader, key))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {HOST}:{port}", received=str(exc),
                          fix="pick another --port (or stop the program using it)") from None
    server.daemon_threads = True
    return server
