"""Export a trained network as a model-repository version the daemon serves as is.

Writes ``<out>/<name>/<version>/model.onnx`` (dynamic batch), ``training.json`` beside it, and
``<out>/<name>/config.toml``. The ONNX file also carries the spec under the metadata key
``edge`` and the training record under ``edge.training``, so a model copied on its own still
says how to feed it and where it came from.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from build_engine.sidecar import atomic_write
from edge.vision.modelspec import CONFIG_FILE, METADATA_KEY, MODEL_FILE, ModelSpec
from edge.vision.synthetic import CLASS_NAMES

if TYPE_CHECKING:  # torch and onnx only where a model is exported: `edge tune` writes configs
    import onnx
    import torch

TRAINING_KEY = "edge.training"
TRAINING_FILE = "training.json"
OPSET = 17
# Starting points until `edge tune` picks per-class values on labelled data.
DEFAULT_THRESHOLDS = {
    "classifier": {"gate": [0.5] * 4},
    "segmenter": {"mask": [0.5] * 4, "min_area": [16, 64, 256, 128]},
}
TILE = 256


def reference_spec(role: str, description: str) -> ModelSpec:
    output = {"name": "logits" if role == "classifier" else "mask_logits", "activation": "sigmoid"}
    return ModelSpec.model_validate(
        {
            "name": role,
            "role": role,
            "classes": list(CLASS_NAMES),
            "description": description,
            "input": {"name": "image", "layout": "NCHW", "channels": 1, "normalization": "unit"},
            "feed": {"mode": "tile", "height": TILE, "width": TILE},
            "output": output,
            "thresholds": DEFAULT_THRESHOLDS[role],
        }
    )


def git_commit(cwd: Path | None = None) -> str:
    """The commit the training code came from ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export(
    model: torch.nn.Module,
    spec: ModelSpec,
    out: Path,
    training: dict[str, Any],
    *,
    version: int | None = None,
) -> Path:
    """Write the model as a new version of ``out/<spec.name>``; returns the ONNX path."""
    import onnx
    import torch

    model_dir = out / spec.name
    version = version or next_version(model_dir)
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = version_dir / MODEL_FILE

    model.eval()
    sample = torch.zeros(1, spec.input.channels, spec.feed.height, spec.feed.width)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / MODEL_FILE
        torch.onnx.export(
            model,
            (sample,),
            str(raw),
            input_names=[spec.input.name or "image"],
            output_names=[spec.output.name or "output"],
            dynamic_axes={
                spec.input.name or "image": {0: "batch"},
                spec.output.name or "output": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
        proto = onnx.load(str(raw))
    spec_json = spec.model_dump(mode="json", exclude_none=True)
    set_metadata(proto, {METADATA_KEY: json.dumps(spec_json), TRAINING_KEY: json.dumps(training)})
    proto.producer_name = "edge.training"
    atomic_write(onnx_path, proto.SerializeToString())
    atomic_write(version_dir / TRAINING_FILE, (json.dumps(training, indent=2) + "\n").encode())
    write_config(
        model_dir / CONFIG_FILE, spec, note="written by edge train; edge tune rewrites thresholds"
    )
    return onnx_path


def set_metadata(proto: onnx.ModelProto, entries: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def write_config(path: Path, spec: ModelSpec, *, note: str) -> None:
    """The spec as config.toml (TOML written by hand: the format is flat and tomllib only reads)."""
    data = spec.model_dump(mode="json", exclude_none=True)
    lines = [f"# {note}"]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in data.items():
        if key not in tables:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    atomic_write(path, ("\n".join(lines) + "\n").encode())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)
