"""The manifest check: a load folder is complete and intact, or it is refused.

Everything that can be wrong with a folder is collected and reported together,
each problem naming its file; nothing is written anywhere until this passes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loader.contracts import Contract, Entity, load_contract
from loader.formats.csv_reader import count_and_digest, file_sha256
from loader.formats.header import CsvFileError, Header, UnknownColumn, read_header
from loader.intake.load_key import LoadKey, LoadKeyError
from loader.intake.manifest_json import MAX_MANIFEST_BYTES, ManifestJsonError, parse_manifest_json
from loader.intake.partners import PartnerSettings

MANIFEST = "manifest.json"
DEFAULT_CONTRACT = "sms_v1"
# A contract has a handful of files; a manifest listing more is refused before any entry is looked at.
MAX_MANIFEST_FILES = 1000
# Problems of one kind shown for a folder; the rest are counted ("... and N more").
MAX_PROBLEMS_SHOWN = 20


# The contract's promise is JSON types, not things that look like them: "40",
# 40.0 and true are not a row count (strict mode refuses each).
class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    name: str = Field(min_length=1, max_length=255)
    rows: int = Field(ge=0, le=2**63 - 1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    load_id: str = Field(min_length=1, max_length=255)
    contract: str = Field(default=DEFAULT_CONTRACT, min_length=1, max_length=255)
    files: list[ManifestFile] = Field(max_length=MAX_MANIFEST_FILES)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a folder or file. `rule` is a stable code."""

    rule: str
    message: str
    file: str | None = None
    field: str | None = None
    severity: Literal["error", "warning"] = "error"
    entity: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.message}"


@dataclass(frozen=True)
class VerifiedFile:
    """A file whose digest matches the manifest. `records` is None until the file has been parsed."""

    entity: Entity
    path: Path
    manifest_rows: int
    sha256: str
    header: Header | None
    records: int | None


@dataclass
class Verification:
    """What the check found. `refusals` non-empty means the folder is refused."""

    folder: Path
    key: LoadKey | None = None
    contract: Contract | None = None
    files: list[VerifiedFile] = field(default_factory=list)
    refusals: list[Problem] = field(default_factory=list)
    findings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refusals and self.key is not None and self.contract is not None


def _manifest_problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(Problem("manifest", f"{loc}: {err['msg']}", file=MANIFEST))
    return problems


def capped(problems: list[Problem]) -> list[Problem]:
    """At most MAX_PROBLEMS_SHOWN problems of each rule, the rest counted in one more line.

    A hostile manifest can name thousands of files that are not there: the
    refusal stays readable and its record in the registry small.
    """
    shown: list[Problem] = []
    hidden: Counter[str] = Counter()
    per_rule: Counter[str] = Counter()
    for problem in problems:
        per_rule[problem.rule] += 1
        if per_rule[problem.rule] <= MAX_PROBLEMS_SHOWN:
            shown.append(problem)
        else:
            hidden[problem.rule] += 1
    for rule, count in hidden.items():
        shown.append(Problem(rule, f"... and {count:,} more {rule} problem(s) like the ones above"))
    return shown


def read_manifest(folder: Path) -> tuple[Manifest | None, list[Problem]]:
    path = folder / MANIFEST
    if not path.is_file() or path.is_symlink():
        return None, [Problem("manifest", "manifest.json is missing (it is written last: is the folder complete?)",
                              file=MANIFEST)]
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestJsonError(f"is {size:,} bytes; a manifest may be at most {MAX_MANIFEST_BYTES:,} bytes")
        data = parse_manifest_json(path.read_bytes())
    except OSError as exc:
        return None, [Problem("manifest", f"cannot be read: {exc.strerror}", file=MANIFEST)]
    except ManifestJsonError as exc:
        return None, [Problem("manifest", str(exc), file=MANIFEST)]
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, list) and len(files) > MAX_MANIFEST_FILES:
        return None, [Problem("manifest", f"files lists {len(files):,} entries; a manifest may list at most "
                              f"{MAX_MANIFEST_FILES:,}", file=MANIFEST)]
    try:
        return Manifest.model_validate(data), []
    except ValidationError as exc:
        return None, _manifest_problems(exc)


def _csv_files_on_disk(folder: Path) -> tuple[dict[str, Path], list[Problem]]:
    found: dict[str, Path] = {}
    problems: list[Problem] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.lower().endswith(".csv"):
            continue
        if path.is_symlink() or not path.is_file():
            problems.append(Problem("extra_file", "is not a regular file (links are not followed)", file=path.name))
            continue
        found[path.name] = path
    return found, problems


def _match_files(
    contract: Contract, manifest: Manifest, on_disk: dict[str, Path]
) -> tuple[dict[str, tuple[Entity, Path, ManifestFile]], list[Problem]]:
    """Pair each contract entity with exactly one file that is both on disk and in the manifest."""
    problems: list[Problem] = []
    listed: dict[str, ManifestFile] = {}
    for name, count in Counter(f.name for f in manifest.files).items():
        if count > 1:
            problems.append(Problem("manifest", f"listed {count} times in manifest.json", file=name))
    for entry in manifest.files:
        listed.setdefault(entry.name, entry)
        if contract.entity_for_file(entry.name) is None:
            problems.append(Problem("extra_file", f"is not a file of contract {contract.name}", file=entry.name))
        elif entry.name not in on_disk:
            problems.append(
                Problem("missing_file", "is listed in manifest.json but not in the folder", file=entry.name))
    for name in on_disk:
        if contract.entity_for_file(name) is None:
            problems.append(Problem("extra_file", f"is not a file of contract {contract.name}", file=name))
        elif name not in listed:
            problems.append(Problem("manifest", "is in the folder but not listed in manifest.json", file=name))

    matched: dict[str, tuple[Entity, Path, ManifestFile]] = {}
    for entity in contract.entities:
        present = [n for n in entity.file_names if n in on_disk]
        if not present and not any(n in listed for n in entity.file_names):
            names = " or ".join(entity.file_names)
            problems.append(Problem("missing_file", f"is missing ({entity.name} is always required, "
                                    "even if empty)", file=names, entity=entity.name))
        elif not present:
            continue
        elif len(present) > 1:
            problems.append(Problem("extra_file", f"{' and '.join(present)} are both present; send one",
                                    file=present[-1], entity=entity.name))
        elif present[0] in listed:
            matched[entity.name] = (entity, on_disk[present[0]], listed[present[0]])
    return matched, problems


def record_count_problems(vf: VerifiedFile, records: int) -> list[Problem]:
    """The manifest's promise about a file's records, checked once they are counted."""
    name, entity = vf.path.name, vf.entity
    problems = []
    if records != vf.manifest_rows:
        problems.append(Problem("row_count", f"has {records} data records, manifest.json says {vf.manifest_rows}",
                                file=name, entity=entity.name))
    if records < entity.min_rows:
        problems.append(Problem("empty_file", f"must hold at least {entity.min_rows} data record(s)",
                                file=name, entity=entity.name))
    return problems


def _unknown_column_message(unknown: UnknownColumn) -> str:
    if not unknown.name.strip():
        what = f"column {unknown.position} has no name and"
    elif unknown.label == unknown.name:
        what = f"column {unknown.name!r}"
    else:
        what = f"column {unknown.name!r} (column {unknown.position})"
    return f"{what} is not in the contract; its values are kept in the raw layer"


def _check_file(
    entity: Entity, path: Path, entry: ManifestFile, settings: PartnerSettings, count_records: bool
) -> tuple[VerifiedFile | None, list[Problem], list[Problem]]:
    name = path.name
    refusals: list[Problem] = []
    findings: list[Problem] = []
    try:
        header = read_header(path, settings.encoding, entity)
        if count_records:
            digest = count_and_digest(path, header, settings.encoding)
            sha256, records = digest.sha256, digest.records
        else:
            sha256, records = file_sha256(path), None
    except (CsvFileError, OSError) as exc:
        return None, [Problem("csv", f"cannot be read as CSV: {exc}", file=name, entity=entity.name)], []
    if sha256 != entry.sha256:
        refusals.append(Problem("digest", f"sha256 is {sha256}, manifest.json says {entry.sha256}",
                                file=name, entity=entity.name))
    verified = VerifiedFile(entity, path, entry.rows, sha256, header, records)
    if records is not None:
        refusals += record_count_problems(verified, records)
    if header is not None:
        for col in header.duplicates:
            refusals.append(Problem("duplicate_column", f"column {col!r} appears more than once in the header",
                                    file=name, field=col, entity=entity.name))
        for col in header.missing_required:
            findings.append(Problem("required", f"required column {col!r} is missing; every row of the file "
                                    "is rejected", file=name, field=col, entity=entity.name))
        for unknown in header.unknown:
            findings.append(Problem("unknown_column", _unknown_column_message(unknown), file=name,
                                    field=unknown.label, severity="warning", entity=entity.name))
    return verified, refusals, findings


def verify_folder(
    folder: Path,
    settings_for: Callable[[str], PartnerSettings],
    on_file: Callable[[str], None] | None = None,
    *,
    count_records: bool = True,
) -> Verification:
    """Check a load folder; never raises on bad input.

    With `count_records=False` files are only hashed, and the caller must check
    record counts (record_count_problems) before writing anything: the landing
    step counts while it parses, which saves a whole pass over the data.
    """
    result = Verification(folder=folder)
    try:
        result.key = LoadKey.from_folder(folder)
    except LoadKeyError as exc:
        result.refusals.append(Problem("path", str(exc)))
        return result
    if not folder.is_dir():
        result.refusals.append(Problem("path", f"{folder} is not a folder"))
        return result

    manifest, problems = read_manifest(folder)
    result.refusals += capped(problems)
    if manifest is None:
        return result
    if manifest.load_id != result.key.load_id:
        result.refusals.append(Problem("load_id", f"load_id {manifest.load_id!r} does not match the folder name "
                                       f"{result.key.load_id!r}", file=MANIFEST))
    try:
        result.contract = load_contract(manifest.contract)
    except KeyError as exc:
        result.refusals.append(Problem("contract", str(exc.args[0]), file=MANIFEST))
        return result

    on_disk, problems = _csv_files_on_disk(folder)
    matched, match_problems = _match_files(result.contract, manifest, on_disk)
    result.refusals += capped(problems + match_problems)
    settings = settings_for(result.key.partner_id)
    for entity in result.contract.entities:
        if entity.name not in matched:
            continue
        _, path, entry = matched[entity.name]
        if on_file:
            on_file(path.name)
        verified, refusals, findings = _check_file(entity, path, entry, settings, count_records)
        result.refusals += refusals
        result.findings += findings
        if verified is not None:
            result.files.append(verified)
    return result
