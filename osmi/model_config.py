"""TF-Serving's `--model_config_file`: a text-format ModelServerConfig.

We write the file with plain text (so the job runner need not import
TensorFlow) and read it with TF-Serving's own proto, so anything the real
`tensorflow_model_server` accepts, our server accepts too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def render_model_config(models: Mapping[str, Path | str]) -> str:
    """Text of a `model_config_list` serving each model name from its base path.

    A base path is the folder holding numbered version folders
    (`<base_path>/<version>/saved_model.pb`); it is written absolute.
    """
    entries = []
    for name, base_path in models.items():
        entries.append(
            "  config {\n"
            f"    name: {json.dumps(name)}\n"
            f"    base_path: {json.dumps(str(Path(base_path).resolve()))}\n"
            '    model_platform: "tensorflow"\n'
            "  }\n"
        )
    return "model_config_list {\n" + "".join(entries) + "}\n"


def load_model_config(path: Path | str) -> dict[str, Path]:
    """Model name -> base path, parsed with TF-Serving's ModelServerConfig proto.

    Raises ValueError naming the file when it does not parse or lists no model.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = Path(path).read_text()
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(f"{path}: not a TF-Serving model config: {exc}") from None
    entries = config.model_config_list.config
    if not entries:
        raise ValueError(f"{path}: model_config_list names no model")
    return {entry.name: Path(entry.base_path) for entry in entries}
