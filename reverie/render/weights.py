"""Where model weights live, whether they are here, and the one place that downloads them.

Rendering only ever reads: a local folder or file, else the Hugging Face cache with
`local_files_only=True`. `pull` (behind `reverie models pull`) is the only code that downloads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from reverie.profiles import CONTROL_PROFILES, PROFILES, Profile
from reverie.types import ReverieError

# A diffusers repo often carries the same weights several times (fp16 copies, .bin, ONNX, a
# single-file checkpoint at the top). Only the diffusers folders in safetensors are needed.
DIFFUSERS_FILES = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors", "*/*.jinja"]
SKIPPED_FILES = ["*.fp16.safetensors", "*.bin", "*.onnx", "*.onnx_data", "*.msgpack", "*.ckpt"]


@dataclass(frozen=True)
class Downloadable:
    """One thing `reverie models pull NAME` can fetch."""

    name: str
    kind: str  # "profile" | "control" | "preprocessor"
    repo_id: str
    files: tuple[str, ...] = ()  # allow-patterns; empty = the diffusers folders
    note: str = ""
    # Preprocessors live in <home>/models/<name>, where the reference picker reads them;
    # everything else lives in the Hugging Face cache.
    in_home: bool = False
    gated: bool = False  # the hub asks each user to accept its licence first


def gated_line(repo_id: str) -> str:
    """The one line on how to get a gated repo."""
    return (f"{repo_id} is gated: accept its licence on https://huggingface.co/{repo_id} while logged in, "
            "then log in here with `hf auth login`")


# Annotators that turn a reference photo into a control image (reverie.agents.references reads them).
PREPROCESSORS = (
    Downloadable("depth", "preprocessor", "depth-anything/Depth-Anything-V2-Small-hf", ("*.json", "*.safetensors"),
                 in_home=True),
    Downloadable("pose", "preprocessor", "lllyasviel/Annotators", ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                 in_home=True),
)


def control_name(profile: Profile) -> str:
    return f"{profile.name}-control"


def downloadables() -> list[Downloadable]:
    items: list[Downloadable] = []
    for p in PROFILES.values():
        items.append(Downloadable(p.name, "profile", p.repo_id, note="" if p.repo_id else "single-file checkpoint: pass --model-path",
                                  gated=p.gated))
        if p.control_repo:
            items.append(Downloadable(control_name(p), "control", p.control_repo, (p.control_file,)))
    return items + list(PREPROCESSORS)


def find(name: str) -> Downloadable:
    items = downloadables()
    for item in items:
        if item.name == name:
            return item
    raise ReverieError(f"unknown model {name!r}: use one of {', '.join(i.name for i in items)} (see `reverie models`)")


# -- reading (never downloads) ---------------------------------------------------------------------
def cached_snapshot(repo_id: str, files: tuple[str, ...] = ()) -> Optional[str]:
    """The local snapshot folder of a hub repo when everything it needs is cached, else None."""
    if not repo_id:
        return None
    if not hub_cache_has(repo_id):  # said without importing the hub client (a tenth of a second or more)
        return None
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, offline, a bad id: all mean "not here"
        return None
    needed = files or ("model_index.json",)
    if not all((Path(folder) / f).exists() for f in needed):
        return None
    return folder


def hub_cache_has(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds any snapshot of a repo: a look at its folder."""
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots").is_dir()


def where(item: Downloadable, models_dir: Optional[Path] = None) -> Optional[str]:
    if item.in_home:
        folder = Path(models_dir or ".") / item.name
        return str(folder) if models_dir and folder.is_dir() and any(folder.iterdir()) else None
    folder = cached_snapshot(item.repo_id, item.files)
    if folder and len(item.files) == 1:
        return str(Path(folder) / item.files[0])
    return folder


def resolve_weights(profile: Profile, model_path: Optional[str]) -> str:
    """A local folder or single file, else the Hugging Face cache; never downloads."""
    if model_path:
        p = Path(model_path).expanduser()
        if not p.exists():
            raise ReverieError(f"model path {model_path} does not exist: point --model-path at a diffusers folder or a .safetensors file")
        return str(p)
    if not profile.repo_id:
        raise ReverieError(f"profile {profile.name} has no hub repo: set --model-path to its .safetensors file")
    folder = cached_snapshot(profile.repo_id)
    if folder is None:
        gated = " (gated: accept its licence on the hub and `hf auth login` first)" if profile.gated else ""
        raise ReverieError(
            f"weights for {profile.name} are not on this machine: run `reverie models pull {profile.name}`{gated} "
            "or set --model-path"
        )
    return folder


def resolve_controlnet(profile: Profile, controlnet_path: Optional[str]) -> str:
    """The control net for canny/depth/pose: a local path, else the cache; never downloads."""
    if controlnet_path:
        p = Path(controlnet_path).expanduser()
        if not p.exists():
            raise ReverieError(f"control net path {controlnet_path} does not exist: point controlnet_path at a folder or .safetensors file")
        return str(p)
    if not profile.control_repo:
        raise ReverieError(f"profile {profile.name} has no control net in reverie: use img2img references, or the {' or '.join(CONTROL_PROFILES)} profile")
    found = where(Downloadable(control_name(profile), "control", profile.control_repo, (profile.control_file,)))
    if found is None:
        raise ReverieError(f"the control net for {profile.name} is not on this machine: run `reverie models pull {control_name(profile)}`")
    return found


# -- downloading (only `reverie models pull`) ------------------------------------------------------
def rich_tqdm(progress: Any) -> type:
    """A tqdm class that draws into a rich Progress, for huggingface_hub's `tqdm_class`."""
    from tqdm.auto import tqdm

    class RichTqdm(tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.pop("name", None)
            kwargs["disable"] = True  # tqdm draws nothing; rich draws instead
            super().__init__(*args, **kwargs)
            self._task = progress.add_task(kwargs.get("desc") or "download", total=kwargs.get("total") or None)

        def __iter__(self):
            for item in self.iterable:
                yield item
                self.update(1)

        def update(self, n: float | None = 1) -> None:
            self.n += n or 0
            progress.update(self._task, completed=self.n, total=self.total or None)

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            progress.update(self._task, completed=self.n, total=self.total or None)

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            progress.update(self._task, description=desc or "")

        set_description_str = set_description

        def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            pass

        def close(self) -> None:
            self.refresh()

    return RichTqdm


def check_online(name: str) -> None:
    """huggingface_hub refuses every download under HF_HUB_OFFLINE; say so before trying."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ReverieError(f"cannot pull {name}: HF_HUB_OFFLINE is set; unset it (and reach huggingface.co) to download")


def pull(name: str, tqdm_class: Optional[type] = None, models_dir: Optional[Path] = None) -> str:
    """Download one model into the Hugging Face cache (preprocessors: into models_dir); return where it is."""
    item = find(name)
    if not item.repo_id:
        raise ReverieError(f"{name} has no hub repo to pull: download its .safetensors yourself and pass --model-path")
    check_online(name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    patterns = list(item.files) if item.files else DIFFUSERS_FILES
    try:
        if item.in_home and models_dir is None:
            from reverie.config import default_home

            models_dir = default_home() / "models"
        local_dir = str(Path(models_dir) / item.name) if item.in_home else None
        folder = snapshot_download(item.repo_id, allow_patterns=patterns, ignore_patterns=None if item.files else SKIPPED_FILES,
                                   tqdm_class=tqdm_class, local_dir=local_dir)
    except GatedRepoError:
        raise ReverieError(gated_line(item.repo_id)) from None
    except RepositoryNotFoundError:
        raise ReverieError(f"{item.repo_id} was not found on the hub (or needs a login): check the id, or `hf auth login`") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReverieError(f"cannot pull {name} from huggingface.co ({first[:160]}): check the network and run the command again") from None
    return str(Path(folder) / item.files[0]) if len(item.files) == 1 and not item.in_home else folder
