"""A servable model on disk: a directory with a manifest, like an MLflow flavor.

The directory holds `model.pt` (the whole PyTorch module that turns request arrays into
outputs, preprocessing included), `held_out.npz` (inputs the module never trained on, for
export parity and latency), optionally `reference.npz` (inputs like those it was fitted on,
the reference sample of drift monitoring; its first `reference_unseen` rows never trained the
model) and `manifest.json` naming the task, the input and output names and the sha256 of
every file. Loading checks those hashes first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelcycle.data.atomic import replacing_folder
from modelcycle.digests import sha256_file

# torch is imported where a module is saved, loaded or traced: a server reads manifests only.
if TYPE_CHECKING:
    import torch
    from torch import nn

MANIFEST = "manifest.json"
FORMAT = "modelcycle.servable/1"
TARGET = "__target__"  # key of the optional held-out labels in held_out.npz
REFERENCE = "reference.npz"


class ServableError(ValueError):
    """A saved model that cannot be trusted or read; the message names the file."""


@dataclass
class ServableModel:
    """What serving and export need from a trained model.

    Attributes:
        task: The task's registered name.
        module: Maps the request arrays (`input_names` order) to `output_names`.
        input_names: Names of the module's inputs, each with a leading batch axis.
        output_names: Names of its outputs, each with a leading batch axis.
        held_out: One array per input: rows the model never trained on.
        info: Task-specific facts for serving (feature names, units, examples...).
        target: Optional binary label per held-out row, to score the first output (ROC-AUC).
        reference: Optional inputs drawn like the training data (one array per input), what
            drift monitoring compares requests with; without it, monitoring uses `held_out`.
        monitor_outputs: Outputs for monitoring only (the embedding's principal components):
            kept out of responses, recorded with each request's drift features.
        reference_unseen: How many of the reference's first rows never trained the model
            (None: unknown, every row counts). Only those give the reference its outputs: a
            model answers the rows it was fitted on more confidently than any new one, and
            a reference of those flagged unseen requests as drift (`reference_frame`).
    """

    task: str
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    held_out: list[np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    target: np.ndarray | None = None
    reference: list[np.ndarray] | None = None
    monitor_outputs: list[str] = field(default_factory=list)
    reference_unseen: int | None = None

    def save(self, directory: Path) -> Path:
        """Write the directory and its manifest; returns the manifest path.

        The files are written into a new folder beside `directory` that is renamed to it
        when complete (`replacing_folder`): a save that fails or is killed leaves no
        `directory`, or the earlier one whole, never files without their manifest (a kill
        can leave the unfinished folder beside it, under a hidden `.NAME.new-*` name). An
        `embedding` output is saved as its first principal components (see
        `modelcycle.embeddings`), an output for monitoring only.
        """
        from modelcycle.embeddings import project_embeddings

        project_embeddings(self)
        with replacing_folder(directory) as new:
            self._write(new)
        return directory / MANIFEST

    def _write(self, directory: Path) -> None:
        """The model, its arrays and, last, the manifest naming their sha256, in `directory`."""
        import torch

        self.module.eval()
        torch.save(self.module, directory / "model.pt")
        arrays: dict[str, Any] = dict(zip(self.input_names, self.held_out, strict=True))
        if self.target is not None:
            arrays[TARGET] = self.target
        np.savez(directory / "held_out.npz", **arrays)
        names = ["model.pt", "held_out.npz"]
        if self.reference is not None:
            reference: dict[str, Any] = dict(zip(self.input_names, self.reference, strict=True))
            np.savez(directory / REFERENCE, **reference)
            names.append(REFERENCE)
        files = {name: sha256_file(directory / name) for name in names}
        manifest = {
            "format": FORMAT,
            "task": self.task,
            "inputs": self.input_names,
            "outputs": self.output_names,
            "monitor_outputs": self.monitor_outputs,
            "reference_unseen": self.reference_unseen,
            "files": files,
            "info": self.info,
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, directory: Path) -> ServableModel:
        """Read a saved model after checking every file against the manifest's sha256."""
        manifest = read_manifest(directory)
        for name, digest in manifest["files"].items():
            actual = sha256_file(directory / name)
            if actual != digest:
                raise ServableError(
                    f"{directory / name}: sha256 {actual[:12]}… does not match the manifest "
                    f"({digest[:12]}…); the file was changed after it was saved. Re-register."
                )
        import torch

        # Our own artifact, hash-checked above: the full module is unpickled.
        module = torch.load(directory / "model.pt", map_location="cpu", weights_only=False)
        with np.load(directory / "held_out.npz") as arrays:
            held_out = [arrays[name] for name in manifest["inputs"]]
            target = arrays[TARGET] if TARGET in arrays.files else None
        return cls(
            manifest["task"],
            module,
            manifest["inputs"],
            manifest["outputs"],
            held_out,
            manifest.get("info", {}),
            target,
            read_reference(directory, manifest),
            manifest.get("monitor_outputs", []),
            manifest.get("reference_unseen"),
        )

    def example(self) -> tuple[torch.Tensor, ...]:
        """Two held-out rows per input as tensors, for tracing an export."""
        import torch

        return tuple(torch.as_tensor(a[:2]) for a in self.held_out)


def read_reference(directory: Path, manifest: dict[str, Any]) -> list[np.ndarray] | None:
    """The reference sample of a saved model directory, or None when it has none."""
    if REFERENCE not in manifest["files"]:
        return None
    with np.load(directory / REFERENCE) as arrays:
        return [arrays[name] for name in manifest["inputs"]]


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a saved model directory."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ServableError(f"{path}: not found; {directory} is not a saved modelcycle model.")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ServableError(
            f"{path}: not a manifest's JSON ({err}); the file was cut short or edited."
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        manifest = manifest if isinstance(manifest, dict) else {}
        raise ServableError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}.")
    return manifest
