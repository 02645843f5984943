"""Realistic shop exports for contract sms_v1, optionally with planted errors whose exact positions are known.

Rows are streamed to disk as they are generated so that memory stays flat at millions of rows; each file's
record count, physical line count and sha256 are taken from the very bytes written. Faker is slow per call, so
it only fills small pools once; rows draw from those pools with a seeded `random.Random`, which makes the
output a pure function of the spec (same spec, byte-identical files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from types import TracebackType

from faker import Faker

from loader.contracts import load_contract

SUPPORTED_CONTRACTS = ("sms_v1",)

_FOLDER_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
_NEEDS_QUOTES = re.compile(r'[",\r\n]').search
# Dates must depend on the spec only, never on the clock; without a dated load_id they hang from this day.
_DEFAULT_AS_OF = date(2026, 11, 22)
_HISTORY_DAYS = 5 * 365

# Counts are uniform draws; rows_for_total relies on these means.
_MAX_VEHICLES = 3  # 0..3 per customer: 1.5 on average
_MAX_INVOICES = 8  # 0..8 per customer: 4 on average
_MAX_LINES = 9  # 1..9 per invoice: 5 on average
_P_ESTIMATE = 0.08
_P_VOID = 0.03
_P_OPEN = 0.12
_P_SPLIT_PAYMENT = 0.15
_PAYMENTS_PER_INVOICE = (1 - _P_ESTIMATE) * (1 - _P_VOID) * (1 + _P_SPLIT_PAYMENT)
_PARTS_PER_CUSTOMER = 0.5
_SUPPLIERS_PER_CUSTOMER = 1 / 50
_MIN_SUPPLIERS = 5
_ROWS_PER_CUSTOMER = (
    1
    + _MAX_VEHICLES / 2
    + _MAX_INVOICES / 2 * (1 + (1 + _MAX_LINES) / 2 + _PAYMENTS_PER_INVOICE)
    + _PARTS_PER_CUSTOMER
    + _SUPPLIERS_PER_CUSTOMER
)

_UNKNOWN_COLUMN = "loyalty_tier"
_LOYALTY_TIERS = ("", "", "silver", "gold", "platinum")

_VIN_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_CHARS = "".join(_VIN_VALUES)
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
_VIN_YEAR_CODES = "ABCDEFGHJKLMNPRSTVWXY123456789"  # position 10, a 30-year cycle starting at 1980
_CHECK_DIGITS = "0123456789X"

# (make, world manufacturer identifier, models)
_MAKES = (
    ("Toyota", "4T1", ("Camry", "Corolla", "RAV4", "Tacoma", "Highlander", "Prius")),
    ("Honda", "1HG", ("Accord", "Civic", "CR-V", "Odyssey", "Pilot")),
    ("Ford", "1FT", ("F-150", "Escape", "Explorer", "Focus", "Mustang")),
    ("Chevrolet", "1G1", ("Silverado 1500", "Malibu", "Equinox", "Tahoe", "Impala")),
    ("Nissan", "1N4", ("Altima", "Sentra", "Rogue", "Frontier")),
    ("Subaru", "JF1", ("Outback", "Forester", "Impreza", "Crosstrek")),
    ("Hyundai", "KMH", ("Elantra", "Sonata", "Tucson", "Santa Fe")),
    ("Jeep", "1C4", ("Wrangler", "Grand Cherokee", "Cherokee")),
    ("BMW", "WBA", ("328i", "X3", "X5")),
    ("Volkswagen", "3VW", ("Jetta", "Passat", "Tiguan")),
)
_TRIMS = ("", "", "Base", "LE", "SE", "XLE", "EX", "LX", "Sport", "Limited", "Touring")
_COLORS = ("Black", "White", "Silver", "Gray", "Blue", "Red", "Green", "Beige", "Maroon", "Gold")
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"

_LABOR_OPS = (
    "Replace front brake pads and rotors",
    "Replace rear brake pads",
    "Lube, oil and filter service",
    "Perform 4-wheel alignment",
    "Diagnose check engine light, code P0420",
    "Replace serpentine belt",
    "Mount and balance 4 tires",
    "Replace water pump and thermostat",
    "Flush cooling system",
    "Replace spark plugs and ignition coils",
    "Replace front struts, both sides",
    "A/C evacuate and recharge",
    "Replace battery, test charging system",
    "Inspect suspension; replace sway bar links",
    "State safety inspection",
    "Rotate tires",
    "Replace timing belt, tensioner and idler",
)
# (description, part number prefix, lowest cost, highest cost) in cents
_PART_KINDS = (
    ("Brake pad set, ceramic, front", "BP", 2_500, 6_000),
    ("Brake rotor, vented", "BR", 3_000, 9_000),
    ("Oil filter", "OF", 400, 1_200),
    ("Synthetic oil 5W-30, 1 qt", "OIL", 600, 1_100),
    ('Wiper blade 22"', "WB", 800, 2_000),
    ('Wiper blade 18" "beam" style', "WB", 900, 2_200),
    ("Serpentine belt", "SB", 2_000, 5_000),
    ("Water pump", "WP", 4_000, 15_000),
    ("Thermostat w/ gasket", "TS", 1_200, 3_500),
    ("Spark plug, iridium", "SP", 600, 1_500),
    ("Ignition coil", "IC", 3_000, 9_000),
    ("Strut assembly, front", "ST", 9_000, 25_000),
    ("Battery, group 24F, 750 CCA", "BAT", 12_000, 22_000),
    ("Cabin air filter", "CAF", 1_000, 3_000),
    ("Engine air filter", "EAF", 1_000, 3_000),
    ("Sway bar link", "SBL", 1_500, 4_000),
    ("Coolant, 50/50 premix, 1 gal", "CL", 1_200, 2_500),
    ("Timing belt kit", "TBK", 9_000, 30_000),
    ('Tire 225/65R17 102H "all-season"', "TR", 9_000, 20_000),
)
_PART_BRANDS = ("ACDelco", "Bosch", "Motorcraft", "Denso", "Wagner", "Moog", "NGK", "Gates", "Mobil 1")
_FEES = (
    ("Shop supplies", 500, 3_500),
    ("Hazardous waste disposal, oil & filter", 300, 800),
    ("Diagnostic fee", 9_900, 14_900),
    ("Tire disposal fee", 300, 500),
)
_SUBLETS = (
    ("Sublet: windshield replacement, Safelite", 25_000, 45_000),
    ("Sublet: transmission rebuild", 180_000, 350_000),
    ("Sublet: exhaust weld repair", 8_000, 20_000),
)
_COMMENTS = (
    'Customer states "grinding noise" when braking',
    "Recommend rear brakes next visit; pads at 3mm",
    'Customer declined "recommended" coolant flush',
    "Tech notes:\nfront pads at 2mm, rotors below discard spec",
    "Vehicle dropped off after hours, key in drop box",
    "Road tested, no further concerns",
    "Next oil change due at 5,000 miles",
    "Called customer, left voicemail",
)
# The line mix: line types and their weights.
_LINE_TYPE_NAMES = ("labor", "part", "fee", "sublet", "comment")
_LINE_TYPE_WEIGHTS = (25, 50, 10, 3, 12)
_LINE_TEMPLATES = 4_096
_CATALOG_SIZE = 300
_METHOD_NAMES = ("card", "cash", "check", "ach", "other")
_METHOD_WEIGHTS = (55, 15, 15, 10, 5)
_P_REPAIR_ORDER = 0.10
# The line writer formats these by position for speed; it refuses a contract whose line_items differ.
_LINE_COLUMNS = (
    "external_dataline_id",
    "external_invoice_id",
    "external_parent_dataline_id",
    "line_type",
    "description",
    "part_number",
    "quantity",
    "unit_price",
    "line_total",
)


@dataclass(frozen=True)
class ExportSpec:
    """What to generate; every byte of the export is a function of these fields."""

    partner_id: str = "demo-partner"
    shop_id: str = "shop-001"
    load_id: str = "2026-11-22_demo"
    seed: int = 42
    customers: int = 200
    plant_errors: bool = True
    contract: str = "sms_v1"

    def __post_init__(self) -> None:
        for name in ("partner_id", "shop_id", "load_id"):
            if not _FOLDER_NAME.match(getattr(self, name)):
                raise ValueError(f"{name} must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'")
        if self.customers < 1:
            raise ValueError("customers must be at least 1: customers.csv may never be empty")
        if self.contract not in SUPPORTED_CONTRACTS:
            raise ValueError(f"no sample data for contract {self.contract!r}; supported: {SUPPORTED_CONTRACTS}")


@dataclass(frozen=True)
class PlantedError:
    """One exception the loader must report, positioned as the contract's report would position it."""

    entity: str
    row_number: int
    line_number: int
    field: str
    rule: str


@dataclass(frozen=True)
class ExportResult:
    """Where the export went, its data rows per entity, and the exceptions a correct loader must report."""

    folder: Path
    rows: dict[str, int]
    planted: list[PlantedError]


def rows_for_total(total_rows: int) -> int:
    """The `customers` value that makes a whole export about `total_rows` data rows."""
    return max(1, round(total_rows / _ROWS_PER_CUSTOMER))


def write_export(root: Path, spec: ExportSpec) -> ExportResult:
    """Write `root/{partner_id}/{shop_id}/{load_id}/`: the seven CSV files, then manifest.json."""
    contract = load_contract(spec.contract)
    folder = root / spec.partner_id / spec.shop_id / spec.load_id
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    # A manifest left from an earlier run would announce this folder complete while it is being rewritten.
    manifest.unlink(missing_ok=True)
    with ExitStack() as stack:
        sinks: dict[str, _CsvSink] = {}
        for entity in contract.entities:
            header = entity.column_names
            if spec.plant_errors and entity.name == "customers":
                header = (*header, _UNKNOWN_COLUMN)
            sinks[entity.name] = stack.enter_context(_CsvSink(folder / entity.file, header))
        generator = _ExportGenerator(spec, sinks)
        generator.run()
        files = [sinks[entity.name].finish() for entity in contract.entities]
    _write_manifest(manifest, spec, files)
    return ExportResult(folder, {e.name: sinks[e.name].records for e in contract.entities}, generator.planted)


def write_line_items_file(path: Path, rows: int, seed: int = 42) -> int:
    """Write only a line_items.csv of `rows` clean records (invoice ids are synthetic); return the record count.

    Meant for benchmarks that need one big file fast, without the rest of an export.
    """
    rng = random.Random(seed)
    templates = _build_line_templates(rng, _build_part_catalog(rng))
    columns = load_contract("sms_v1").entity("line_items").column_names
    with _CsvSink(path, columns) as sink:
        lines = _LineWriter(rng, templates, sink, columns)
        invoice = 0
        while sink.records < rows:
            invoice += 1
            lines.write_invoice(f"INV-{invoice:07d}", min(1 + int(rng.random() * _MAX_LINES), rows - sink.records))
        sink.finish()
    return sink.records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loader.samples.sms_v1", description="Write a realistic sms_v1 shop export."
    )
    parser.add_argument("out_dir", type=Path, help="root of the imports tree")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--customers", type=int, default=ExportSpec.customers, help="scale: other counts follow")
    size.add_argument("--rows", type=int, help="about this many data rows in all (sets --customers)")
    parser.add_argument("--seed", type=int, default=ExportSpec.seed)
    parser.add_argument("--partner-id", default=ExportSpec.partner_id)
    parser.add_argument("--shop-id", default=ExportSpec.shop_id)
    parser.add_argument("--load-id", default=ExportSpec.load_id)
    parser.add_argument("--no-errors", action="store_true", help="do not plant rule violations")
    args = parser.parse_args(argv)
    try:
        spec = ExportSpec(
            partner_id=args.partner_id,
            shop_id=args.shop_id,
            load_id=args.load_id,
            seed=args.seed,
            customers=rows_for_total(args.rows) if args.rows is not None else args.customers,
            plant_errors=not args.no_errors,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(write_export(args.out_dir, spec).folder)
    return 0


class _CsvSink:
    """One CSV file being written: counts records and physical lines and hashes exactly the bytes written."""

    _FLUSH_RECORDS = 4_096

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self.name = path.name
        self.records = 0
        self._lines = 0
        self._sha256 = hashlib.sha256()
        self._file = path.open("wb")
        self._pending = [",".join(header) + "\r\n"]

    def __enter__(self) -> _CsvSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()

    def write(self, record: str) -> None:
        """Append one CSV-encoded record, line end included."""
        self._pending.append(record)
        self.records += 1
        if len(self._pending) >= self._FLUSH_RECORDS:
            self._flush()

    def next_position(self) -> tuple[int, int]:
        """(row_number, line_number) that the next record will get."""
        self._flush()
        return self.records + 1, self._lines + 1

    def finish(self) -> dict[str, object]:
        """Flush and close; return the file's manifest entry."""
        self._flush()
        self._file.close()
        return {"name": self.name, "rows": self.records, "sha256": self._sha256.hexdigest()}

    def _flush(self) -> None:
        text = "".join(self._pending)
        self._pending.clear()
        self._lines += text.count("\n")
        # surrogateescape turns the lone surrogates of planted encoding errors back into their raw bytes.
        data = text.encode("utf-8", "surrogateescape")
        self._sha256.update(data)
        self._file.write(data)


@dataclass(frozen=True, slots=True)
class _Part:
    part_number: str
    description: str
    cost: int
    price: int


@dataclass(frozen=True, slots=True)
class _LineTemplate:
    """The non-id part of a line item, pre-rendered so that the hot loop only formats ids."""

    line_type: str
    description: str
    part_number: str
    quantity: str
    unit_price: str
    line_total: str
    total_cents: int
    csv: str


class _LineWriter:
    """Writes the line items of one invoice at a time: the bulk of every export."""

    def __init__(
        self, rng: random.Random, templates: Sequence[_LineTemplate], sink: _CsvSink, columns: Sequence[str]
    ) -> None:
        if tuple(columns) != _LINE_COLUMNS:
            raise ValueError(f"line_items columns {tuple(columns)} differ from the ones this writer formats")
        self._random = rng.random
        self._templates = templates
        self._sink = sink
        self._seq = 0

    def write_invoice(self, invoice_id: str, count: int) -> int:
        """Write `count` lines of the invoice; return their total in cents (the invoice's subtotal)."""
        random_ = self._random
        templates = self._templates
        size = len(templates)
        write = self._sink.write
        labor_id = ""
        subtotal = 0
        for _ in range(count):
            self._seq += 1
            line_id = f"LIN-{self._seq:08d}"
            template = templates[int(random_() * size)]
            parent = ""
            if template.line_type == "labor":
                labor_id = line_id
            elif labor_id and template.line_type == "part" and random_() < 0.6:
                # Shops hang the parts of a job under its labor line; the parent is always earlier in the file.
                parent = labor_id
            write(f"{line_id},{invoice_id},{parent},{template.csv}\r\n")
            subtotal += template.total_cents
        return subtotal


@dataclass(frozen=True)
class _Pools:
    """Faker values drawn once; rows pick from them."""

    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    companies: tuple[str, ...]
    streets: tuple[str, ...]
    secondary: tuple[str, ...]
    cities: tuple[str, ...]
    states: tuple[str, ...]
    postcodes: tuple[str, ...]
    email_domains: tuple[str, ...]


def _build_pools(seed: int) -> _Pools:
    fake = Faker("en_US")
    fake.seed_instance(seed)

    def pool(make: Callable[[], str], size: int) -> tuple[str, ...]:
        return tuple(make() for _ in range(size))

    return _Pools(
        first_names=pool(fake.first_name, 500),
        last_names=pool(fake.last_name, 500),
        companies=pool(fake.company, 300),
        streets=pool(fake.street_address, 500),
        secondary=pool(fake.secondary_address, 100),
        cities=pool(fake.city, 300),
        states=pool(lambda: fake.state_abbr(include_territories=False, include_freely_associated_states=False), 100),
        postcodes=pool(fake.postcode, 500),
        email_domains=pool(fake.free_email_domain, 50),
    )


def _build_part_catalog(rng: random.Random) -> tuple[_Part, ...]:
    catalog: dict[str, _Part] = {}
    while len(catalog) < _CATALOG_SIZE:
        kind, prefix, low, high = rng.choice(_PART_KINDS)
        number = f"{prefix}-{rng.randint(10_000, 99_999)}"
        cost = rng.randint(low, high)
        catalog[number] = _Part(
            number, f"{kind} - {rng.choice(_PART_BRANDS)}", cost, cost * rng.randint(135, 180) // 100
        )
    return tuple(catalog.values())


def _build_line_templates(rng: random.Random, catalog: Sequence[_Part]) -> tuple[_LineTemplate, ...]:
    labor_rate = rng.choice((11_900, 12_900, 13_900, 14_900, 15_900))
    templates = []
    for line_type in rng.choices(_LINE_TYPE_NAMES, _LINE_TYPE_WEIGHTS, k=_LINE_TEMPLATES):
        if line_type == "labor":
            tenths = rng.randint(3, 40)
            total = (labor_rate * tenths + 5) // 10
            templates.append(_template("labor", rng.choice(_LABOR_OPS), "", f"{tenths / 10:.1f}", labor_rate, total))
        elif line_type == "part":
            part = rng.choice(catalog)
            quantity = rng.choice((1, 1, 1, 1, 2, 2, 4, 5))
            templates.append(
                _template("part", part.description, part.part_number, str(quantity), part.price, part.price * quantity)
            )
        elif line_type == "comment":
            templates.append(_template("comment", rng.choice(_COMMENTS)))
        else:
            description, low, high = rng.choice(_FEES if line_type == "fee" else _SUBLETS)
            price = rng.randint(low, high)
            templates.append(_template(line_type, description, "", "1", price, price))
    return tuple(templates)


def _template(
    line_type: str, description: str, part_number: str = "", quantity: str = "", unit: int | None = None, total: int = 0
) -> _LineTemplate:
    prices = ("", "") if unit is None else (_money(unit), _money(total))
    fields = (line_type, description, part_number, quantity, *prices)
    return _LineTemplate(*fields, total, ",".join(_q(f) for f in fields))


class _ExportGenerator:
    """Generates one whole export into open sinks: customers with their vehicles and invoices, the invoices'
    lines and payments, then parts and suppliers, and (if asked) the planted errors half-way through."""

    def __init__(self, spec: ExportSpec, sinks: dict[str, _CsvSink]) -> None:
        contract = load_contract(spec.contract)
        self.planted: list[PlantedError] = []
        self._spec = spec
        self._sinks = sinks
        self._columns = {e.name: e.column_names for e in contract.entities}
        self._rng = random.Random(spec.seed)
        self._pools = _build_pools(spec.seed)
        self._catalog = _build_part_catalog(self._rng)
        self._templates = _build_line_templates(self._rng, self._catalog)
        self._lines = _LineWriter(self._rng, self._templates, sinks["line_items"], self._columns["line_items"])
        as_of = _as_of(spec.load_id)
        self._as_of_year = as_of.year
        self._days = [(as_of - timedelta(days=n)).isoformat() for n in range(_HISTORY_DAYS + 1)]
        self._tax_basis_points = self._rng.choice((0, 600, 725, 825, 875))
        self._seq = {"vehicles": 0, "invoices": 0, "payments": 0}
        self._invoice_number = 10_000
        if spec.plant_errors:
            self._columns["customers"] = (*self._columns["customers"], _UNKNOWN_COLUMN)
            self.planted.append(PlantedError("customers", 0, 1, _UNKNOWN_COLUMN, "unknown_column"))

    def run(self) -> None:
        plant_after = max(1, self._spec.customers // 2)
        for number in range(1, self._spec.customers + 1):
            self._write_customer(f"CUS-{number:06d}")
            if self._spec.plant_errors and number == plant_after:
                self._write_planted()
        for number in range(1, int(self._spec.customers * _PARTS_PER_CUSTOMER) + 1):
            self._write("inventory_parts", self._part_values(number))
        for number in range(1, max(_MIN_SUPPLIERS, int(self._spec.customers * _SUPPLIERS_PER_CUSTOMER)) + 1):
            self._write("suppliers", self._supplier_values(number))

    # -- clean rows --------------------------------------------------------------------------------------------

    def _write_customer(self, customer_id: str) -> None:
        rng = self._rng
        created = int(rng.random() * _HISTORY_DAYS)
        customer = self._customer_values(customer_id, created)
        self._write("customers", customer)
        vehicles = []
        for _ in range(int(rng.random() * (_MAX_VEHICLES + 1))):
            vehicle = self._vehicle_values(self._next_id("vehicles", "VEH", 7), customer_id, customer["state"])
            self._write("vehicles", vehicle)
            vehicles.append(vehicle)
        for _ in range(int(rng.random() * (_MAX_INVOICES + 1))):
            self._write_invoice(customer_id, vehicles, created)

    def _write_invoice(self, customer_id: str, vehicles: Sequence[dict[str, str]], created: int) -> None:
        rng = self._rng
        invoice_id = self._next_id("invoices", "INV", 7)
        subtotal = self._lines.write_invoice(invoice_id, 1 + int(rng.random() * _MAX_LINES))
        # Invoices fall between the customer's creation and the export date.
        day = int(rng.random() * (created + 1))
        vehicle = rng.choice(vehicles) if vehicles and rng.random() < 0.9 else None
        kind = rng.random()
        document_type = (
            "estimate" if kind < _P_ESTIMATE else "repair_order" if kind < _P_ESTIMATE + _P_REPAIR_ORDER else "invoice"
        )
        draw = rng.random()
        if draw < _P_VOID:
            status = "void"
        else:
            status = "open" if document_type == "estimate" or draw < _P_VOID + _P_OPEN else "closed"
        tax = self._tax(subtotal)
        self._write(
            "invoices",
            self._invoice_values(invoice_id, customer_id, vehicle, day, subtotal, tax, document_type, status),
        )
        total = subtotal + tax
        # Estimates and void documents are not paid; open ones carry a deposit.
        if document_type != "estimate" and status != "void" and total > 0:
            self._write_payments(invoice_id, day, total if status == "closed" else max(1, total // 2))

    def _write_payments(self, invoice_id: str, invoice_day: int, paid: int) -> None:
        rng = self._rng
        amounts = [paid]
        if paid >= 2 and rng.random() < _P_SPLIT_PAYMENT:
            if rng.random() < 0.2:
                extra = rng.randint(1, 5_000)
                amounts = [paid + extra, -extra]  # an overpayment, refunded: refunds are negative amounts
            else:
                first = rng.randint(1, paid - 1)
                amounts = [first, paid - first]
        day = max(0, invoice_day - rng.randint(0, 30))  # paid on or after the invoice date, never after export
        for amount in amounts:
            self._write("payments", self._payment_values(self._next_id("payments", "PAY", 7), invoice_id, day, amount))

    def _customer_values(self, customer_id: str, created: int) -> dict[str, str]:
        rng, pools = self._rng, self._pools
        first, last, company = rng.choice(pools.first_names), rng.choice(pools.last_names), ""
        if rng.random() < 0.15:
            company = rng.choice(pools.companies)
            if rng.random() < 0.5:
                first = last = ""
        draw = rng.random()
        if draw < 0.2:
            email = ""
        elif company:
            email = f"{rng.choice(('service', 'office', 'fleet', 'accounts'))}@{_slug(company)}.com"
        else:
            local = f"{_slug(first)}.{_slug(last)}{rng.randint(1, 99) if draw < 0.5 else ''}"
            email = f"{local}@{rng.choice(pools.email_domains)}"
            if draw > 0.9:
                email = email.title()  # stored lowercase by the loader, so mixed case must be accepted
        values = {
            "external_customer_id": customer_id,
            "first_name": first,
            "last_name": last,
            "company_name": company,
            "email": email,
            "phone": self._phone() if rng.random() < 0.95 else "",
            "address_line1": rng.choice(pools.streets),
            "address_line2": rng.choice(pools.secondary) if rng.random() < 0.1 else "",
            "city": rng.choice(pools.cities),
            "state": rng.choice(pools.states),
            "postal_code": rng.choice(pools.postcodes),
            "created_at": f"{self._days[created]}T{rng.randint(7, 18):02d}:{rng.randint(0, 59):02d}:"
            f"{rng.randint(0, 59):02d}",
        }
        if self._spec.plant_errors:
            values[_UNKNOWN_COLUMN] = rng.choice(_LOYALTY_TIERS)
        return values

    def _vehicle_values(self, vehicle_id: str, customer_id: str, state: str) -> dict[str, str]:
        rng = self._rng
        make, wmi, models = rng.choice(_MAKES)
        year = self._as_of_year + 1 - int(rng.random() * 26)
        odometer = max(0, self._as_of_year - year) * rng.randint(7_000, 15_000) + rng.randint(10, 3_000)
        return {
            "external_vehicle_id": vehicle_id,
            "external_customer_id": customer_id,
            "vin": self._vin(wmi, year),
            "year": str(year),
            "make": make,
            "model": rng.choice(models),
            "trim": rng.choice(_TRIMS),
            "color": rng.choice(_COLORS),
            "license_plate": f"{rng.randint(1, 9)}{''.join(rng.choices(_LETTERS, k=3))}{rng.randint(0, 999):03d}",
            "license_state": state,
            "odometer": str(odometer),
        }

    def _invoice_values(
        self,
        invoice_id: str,
        customer_id: str,
        vehicle: dict[str, str] | None,
        day: int,
        subtotal: int,
        tax: int,
        document_type: str,
        status: str,
    ) -> dict[str, str]:
        self._invoice_number += 1
        # The odometer reading grows towards the vehicle's current one, about 35 miles a day.
        odometer_in = str(max(0, int(vehicle["odometer"]) - 35 * day)) if vehicle else ""
        return {
            "external_invoice_id": invoice_id,
            "external_customer_id": customer_id,
            "external_vehicle_id": vehicle["external_vehicle_id"] if vehicle else "",
            "invoice_number": str(self._invoice_number),
            "document_type": document_type,
            "status": status,
            "invoice_date": self._days[day],
            "subtotal": _money(subtotal),
            "tax_total": _money(tax),
            "total": _money(subtotal + tax),
            "odometer_in": odometer_in,
        }

    def _payment_values(self, payment_id: str, invoice_id: str, day: int, amount: int) -> dict[str, str]:
        rng = self._rng
        method = rng.choices(_METHOD_NAMES, _METHOD_WEIGHTS)[0]
        reference = {
            "card": f"{rng.choice(('VISA', 'MC', 'AMEX', 'DISC'))} ****{rng.randint(0, 9999):04d}",
            "check": f"Check {rng.randint(1001, 9999)}" + (", deposited late" if rng.random() < 0.05 else ""),
            "ach": f"ACH {rng.randint(10**8, 10**9 - 1)}",
            "other": f"Gift card GC-{rng.randint(1000, 9999)}",
        }.get(method, "")
        return {
            "external_payment_id": payment_id,
            "external_invoice_id": invoice_id,
            "payment_date": self._days[day],
            "amount": _money(amount),
            "method": method,
            "reference": reference,
        }

    def _part_values(self, number: int) -> dict[str, str]:
        part = self._catalog[(number - 1) % len(self._catalog)]
        variant = (number - 1) // len(self._catalog)
        return {
            "external_part_id": f"PRT-{number:06d}",
            # More stock items than catalog entries: further ones are variants (other bin, other size).
            "part_number": f"{part.part_number}-{variant}" if variant else part.part_number,
            "description": part.description,
            "quantity_on_hand": str(self._rng.randint(0, 40)),
            "cost": _money(part.cost),
            "price": _money(part.price),
        }

    def _supplier_values(self, number: int) -> dict[str, str]:
        rng, pools = self._rng, self._pools
        name = rng.choice(pools.companies)
        return {
            "external_supplier_id": f"SUP-{number:04d}",
            "name": name,
            "phone": self._phone(),
            "email": f"orders@{_slug(name)}.com",
            "account_number": f"{rng.randint(100_000, 999_999)}",
            "address_line1": rng.choice(pools.streets),
            "city": rng.choice(pools.cities),
            "state": rng.choice(pools.states),
            "postal_code": rng.choice(pools.postcodes),
        }

    def _phone(self) -> str:
        rng = self._rng
        return f"({rng.randint(201, 989)}) {rng.randint(201, 989)}-{rng.randint(0, 9999):04d}"

    def _vin(self, wmi: str, year: int) -> str:
        rng = self._rng
        body = "".join(rng.choices(_VIN_CHARS, k=5))
        return _with_check_digit(
            f"{wmi}{body}0{_VIN_YEAR_CODES[(year - 1980) % 30]}{rng.choice(_VIN_CHARS)}{rng.randrange(10**6):06d}"
        )

    def _tax(self, subtotal: int) -> int:
        return (subtotal * self._tax_basis_points + 5_000) // 10_000

    def _next_id(self, entity: str, prefix: str, width: int) -> str:
        self._seq[entity] += 1
        return f"{prefix}-{self._seq[entity]:0{width}d}"

    def _write(self, entity: str, values: dict[str, str]) -> None:
        self._sinks[entity].write(self._render(entity, values))

    def _render(self, entity: str, values: dict[str, str]) -> str:
        return ",".join([_q(values[column]) for column in self._columns[entity]]) + "\r\n"

    # -- planted errors ----------------------------------------------------------------------------------------

    def _plant(self, entity: str, values: dict[str, str], *errors: tuple[str, str]) -> None:
        """Write one planted row and record the (field, rule) exceptions it must produce."""
        self._plant_record(entity, self._render(entity, values), *errors)

    def _plant_record(self, entity: str, record: str, *errors: tuple[str, str]) -> None:
        sink = self._sinks[entity]
        row_number, line_number = sink.next_position()
        sink.write(record)
        self.planted.extend(PlantedError(entity, row_number, line_number, f, rule) for f, rule in errors)

    def _plant_ragged(self, entity: str, values: dict[str, str], column: str, unquoted: str) -> None:
        """Plant a record whose `column` holds an unquoted comma: one field too many, a common export bug."""
        fields = [unquoted if c == column else _q(values[c]) for c in self._columns[entity]]
        self._plant_record(entity, ",".join(fields) + "\r\n", ("", "ragged"))

    def _write_planted(self) -> None:
        """Plant rule violations, each row breaking only the rule recorded for it (plus recorded cascades).

        Planted rows and the clean rows they hang from use their own ids (`-P..`), so that no planted row
        depends on random data and nothing random depends on a planted row.
        """
        day = 30
        owner = self._customer_values("CUS-P01", 400)
        other = self._customer_values("CUS-P02", 400)
        vehicle = self._vehicle_values("VEH-P01", "CUS-P01", owner["state"])
        part = next(t for t in self._templates if t.line_type == "part")
        self._write("customers", owner)
        self._write("customers", other)
        self._write("vehicles", vehicle)
        for number in (1, 2):
            self._write("invoices", self._planted_invoice(f"INV-P0{number}", vehicle, day, part.total_cents))
            self._write("line_items", _line_values(f"LIN-P0{number}", f"INV-P0{number}", "", part))

        self._plant_customers()
        self._plant_vehicles(owner["state"])
        self._plant_invoices(vehicle, day)
        self._plant_line_items(part)
        self._plant_payments(day)

    def _plant_customers(self) -> None:
        def customer(customer_id: str, **changes: str) -> dict[str, str]:
            return {**self._customer_values(customer_id, 400), **changes}

        self._plant("customers", customer("CUS-P03", last_name="", company_name=""), ("last_name", "required"))
        self._plant("customers", customer("CUS-P04", email="maria.garcia@@gmail.com"), ("email", "format"))
        # The same customer exported twice (say, before and after an edit): both rows are rejected.
        for phone in ("(555) 201-0000", "(555) 201-0001"):
            self._plant("customers", customer("CUS-P05", phone=phone), ("external_customer_id", "duplicate"))
        self._plant("customers", customer("CUS-P06", phone="555-123"), ("phone", "short_phone"))
        # A cp1252 byte (é) in a UTF-8 file.
        self._plant("customers", customer("CUS-P07", city="Montr\udce9al"), ("city", "encoding"))

    def _plant_vehicles(self, state: str) -> None:
        def vehicle(vehicle_id: str, customer_id: str = "CUS-P01", **changes: str) -> dict[str, str]:
            return {**self._vehicle_values(vehicle_id, customer_id, state), **changes}

        # Owned by the customer rejected for `required`, and by the duplicated customer.
        self._plant("vehicles", vehicle("VEH-P02", "CUS-P03"), ("external_customer_id", "parent_rejected"))
        self._plant("vehicles", vehicle("VEH-P03", "CUS-P05"), ("external_customer_id", "parent_rejected"))
        self._plant("vehicles", vehicle("VEH-P04", "CUS-P99"), ("external_customer_id", "orphan"))
        self._plant("vehicles", vehicle("VEH-P05", year="1850"), ("year", "range"))
        # An O typed for a 0; the check digit is right if O is read as 0, so only the format is wrong.
        typo = vehicle("VEH-P06")
        vin = _with_check_digit(typo["vin"][:4] + "0" + typo["vin"][5:])
        self._plant("vehicles", {**typo, "vin": vin[:4] + "O" + vin[5:]}, ("vin", "format"))
        misread = vehicle("VEH-P07")
        vin = misread["vin"]
        wrong = _CHECK_DIGITS[(_CHECK_DIGITS.index(vin[8]) + 1) % len(_CHECK_DIGITS)]
        self._plant("vehicles", {**misread, "vin": vin[:8] + wrong + vin[9:]}, ("vin", "vin_check_digit"))

    def _planted_invoice(self, invoice_id: str, vehicle: dict[str, str], day: int, subtotal: int) -> dict[str, str]:
        return self._invoice_values(
            invoice_id, "CUS-P01", vehicle, day, subtotal, self._tax(subtotal), "invoice", "closed"
        )

    def _plant_invoices(self, vehicle: dict[str, str], day: int) -> None:
        subtotal = 12_000

        def invoice(invoice_id: str, **changes: str) -> dict[str, str]:
            return {**self._planted_invoice(invoice_id, vehicle, day, subtotal), **changes}

        self._plant("invoices", invoice("INV-P03", invoice_number="   "), ("invoice_number", "required"))
        self._plant("invoices", invoice("INV-P04", invoice_date="03/15/2024"), ("invoice_date", "type"))
        self._plant("invoices", invoice("INV-P05", status="paid"), ("status", "enum"))
        total = _money(subtotal + self._tax(subtotal) + 500)
        self._plant("invoices", invoice("INV-P06", total=total), ("total", "total_mismatch"))
        self._plant(
            "invoices",
            invoice("INV-P07", external_customer_id="CUS-P02"),
            ("external_vehicle_id", "vehicle_owner_mismatch"),
        )
        self._plant("invoices", invoice("INV-P08", external_vehicle_id="VEH-P98"), ("external_vehicle_id", "orphan"))

    def _plant_line_items(self, part: _LineTemplate) -> None:
        def line(line_id: str, parent: str = "", **changes: str) -> dict[str, str]:
            return {**_line_values(line_id, "INV-P01", parent, part), **changes}

        parent = "external_parent_dataline_id"
        self._plant("line_items", line("LIN-P03", line_type="misc"), ("line_type", "enum"))
        self._plant("line_items", line("LIN-P04", quantity="1,5"), ("quantity", "type"))
        self._plant("line_items", line("LIN-P05", unit_price="12.345"), ("unit_price", "format"))
        self._plant("line_items", line("LIN-P06", "LIN-P02"), (parent, "parent_mismatch"))
        self._plant("line_items", line("LIN-P07", "LIN-P99"), (parent, "orphan"))
        self._plant("line_items", line("LIN-P08", "LIN-P09"), (parent, "cycle"))
        self._plant("line_items", line("LIN-P09", "LIN-P08"), (parent, "cycle"))
        self._plant("line_items", line("LIN-P10", "LIN-P10"), (parent, "cycle"))
        self._plant("line_items", line("LIN-P11", "LIN-P08"), (parent, "parent_rejected"))
        self._plant(
            "line_items", line("LIN-P12", description="Brake cleaner \udcff 14 oz"), ("description", "encoding")
        )
        self._plant_ragged("line_items", line("LIN-P13"), "description", "Brake pads, front axle")

    def _plant_payments(self, day: int) -> None:
        def payment(payment_id: str, **changes: str) -> dict[str, str]:
            return {**self._payment_values(payment_id, "INV-P01", day, 4_500), **changes}

        self._plant("payments", payment("PAY-P01", amount="$45.00"), ("amount", "type"))
        self._plant("payments", payment("PAY-P02", amount="0.00"), ("amount", "range"))
        self._plant("payments", payment("PAY-P03", method="bitcoin"), ("method", "enum"))
        self._plant_ragged("payments", payment("PAY-P04", method="check"), "reference", "Check 1042, J. Smith")


def _line_values(line_id: str, invoice_id: str, parent: str, template: _LineTemplate) -> dict[str, str]:
    fields = (template.line_type, template.description, template.part_number, template.quantity)
    return dict(
        zip(
            _LINE_COLUMNS, (line_id, invoice_id, parent, *fields, template.unit_price, template.line_total), strict=True
        )
    )


def _write_manifest(path: Path, spec: ExportSpec, files: list[dict[str, object]]) -> None:
    manifest = {"load_id": spec.load_id, "contract": spec.contract, "files": files}
    # Written aside and renamed: a watcher must never read a half-written manifest.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _as_of(load_id: str) -> date:
    """The export's date: the date a load id starts with, as partners name loads, else a fixed day."""
    try:
        return date.fromisoformat(load_id[:10])
    except ValueError:
        return _DEFAULT_AS_OF


def _with_check_digit(vin: str) -> str:
    """`vin` with position 9 set to its ISO 3779 check digit."""
    total = sum(_VIN_VALUES[char] * weight for char, weight in zip(vin, _VIN_WEIGHTS, strict=True))
    return vin[:8] + _CHECK_DIGITS[total % 11] + vin[9:]


def _q(value: str) -> str:
    """One CSV field, quoted only when RFC 4180 requires it."""
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if _NEEDS_QUOTES(value) else value


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _slug(text: str) -> str:
    """Lowercase letters and digits of the first two words: an email-safe stand-in for a name."""
    return "".join(re.sub(r"[^a-z0-9]", "", word.lower()) for word in text.split()[:2])


if __name__ == "__main__":
    raise SystemExit(main())
