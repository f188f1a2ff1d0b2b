"""The Ollama Modelfile written beside the GGUF files."""

from __future__ import annotations

from train.chat import CHATML_TEMPLATE


def ollama_modelfile(*, gguf_name: str, template: str | None, system: str | None, stop: str | None) -> str:
    lines = [f"FROM ./{gguf_name}", ""]
    if template == CHATML_TEMPLATE:
        lines += ['TEMPLATE """<s>{{- range .Messages }}<|im_start|>{{ .Role }}',
                  "{{ .Content }}<|im_end|>", "{{ end }}<|im_start|>assistant", '"""']
    else:
        lines += ["# No TEMPLATE: Ollama reads the chat template stored in the GGUF (tokenizer.chat_template)."]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    if stop:
        lines.append(f'PARAMETER stop "{stop}"')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"
