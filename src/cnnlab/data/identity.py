"""What a dataset's files are: the official files by size and SHA-256, and a copy's fingerprint.

A file read for a built-in dataset is one of three things:
- the official file it should be (its SHA-256 matches);
- a different known file (another split, another dataset): refused, it would silently measure the
  wrong thing, e.g. "test accuracy" on the 60,000 training images;
- anything else that is well formed: a custom copy, accepted and reported as such. A file with an
  official size but the wrong checksum is a damaged official file and is refused.

Each run records the fingerprint of the files it trained on; resume and eval check it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cnnlab.errors import DataError

# name in the registry -> raw file name -> (bytes, sha256) of the uncompressed official file
OFFICIAL: dict[str, dict[str, tuple[int, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte": (
            47_040_016,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        "train-labels-idx1-ubyte": (
            60_008,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        "t10k-images-idx3-ubyte": (
            7_840_016,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        "t10k-labels-idx1-ubyte": (
            10_008,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": (
            47_040_016,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        "train-labels-idx1-ubyte": (
            60_008,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        "t10k-images-idx3-ubyte": (
            7_840_016,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        "t10k-labels-idx1-ubyte": (
            10_008,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    },
}
KNOWN = {sha: (ds, name) for ds, files in OFFICIAL.items() for name, (_, sha) in files.items()}


@dataclass(frozen=True)
class FileIdentity:
    name: str
    size: int
    sha256: str
    official: bool

    def to_json(self) -> dict:
        return {"bytes": self.size, "sha256": self.sha256, "official": self.official}


def identify(dataset: str, name: str, raw: bytes, shown_as: str) -> FileIdentity:
    """Check `raw`, read from `shown_as` as `dataset`'s file `name`, against the known files."""
    sha = hashlib.sha256(raw).hexdigest()
    official = OFFICIAL.get(dataset, {}).get(name)
    if official is not None and sha == official[1]:
        return FileIdentity(name, len(raw), sha, True)
    if sha in KNOWN:
        other_dataset, other_name = KNOWN[sha]
        what = (
            f"{other_dataset}'s {other_name}"
            if other_dataset != dataset
            else f"the file {other_name} (a swapped split?)"
        )
        raise DataError(f"{shown_as}: this is {what}, not {dataset}'s {name}")
    if official is not None and len(raw) == official[0]:
        raise DataError(
            f"{shown_as}: has the official size of {dataset}'s {name} but not its SHA-256 "
            f"({sha[:12]}... instead of {official[1][:12]}...): a damaged copy; replace it"
        )
    return FileIdentity(name, len(raw), sha, False)


def describe(identities: list[FileIdentity]) -> str:
    """'official files' or 'a custom copy (not the official files)', for the first lines."""
    if all(i.official for i in identities):
        return "the official files, checksums verified"
    return "a custom copy (not the official files; accepted because it is well formed)"


def check_recorded(recorded: dict | None, identities: list[FileIdentity], where: str) -> None:
    """Refuse data whose fingerprint differs from the one a run recorded in its config.json."""
    if not recorded:
        return
    files = recorded.get("files") if isinstance(recorded, dict) else None
    if not isinstance(files, dict):
        return
    for identity in identities:
        entry = files.get(identity.name)
        if isinstance(entry, dict) and entry.get("sha256") not in (None, identity.sha256):
            raise DataError(
                f"{where}: {identity.name} differs from the file this run was trained with "
                f"(SHA-256 {identity.sha256[:12]}... instead of {str(entry.get('sha256'))[:12]}...)"
                f"; point --data-dir at the data the run used"
            )
