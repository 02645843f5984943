-- Production-facing tables of contract sms_v1, keyed by the crosswalk's internal
-- UUID, relationships as internal UUIDs. Written only by the publish step, in one
-- transaction per load. Applied on every start; every statement is idempotent.
-- Number columns hold exactly what the contract's types (`types` in sms_v1.yaml)
-- let through staging: int bigint, decimal numeric(24, 6), money numeric(14, 2).
create schema if not exists prod_sms;

-- (partner, shop, entity, external id) -> deterministic internal id. Keyed by
-- the external key only: the internal id is a function of it (an md5 of the
-- key), so it is unique too, and a second index on it would cost a big
-- publish a quarter of its time for lookups that the production tables'
-- primary keys already serve (id -> external_id).
create table if not exists prod_sms.id_crosswalk (
    internal_id uuid not null,
    partner_id text not null,
    shop_id text not null,
    entity_type text not null,
    external_id text not null,
    first_load_id text not null,
    last_load_id text not null,
    first_seen_at timestamptz not null,
    last_seen_at timestamptz not null,
    constraint id_crosswalk_external primary key (partner_id, shop_id, entity_type, external_id)
);

create table if not exists prod_sms.customers (
    id uuid primary key,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    first_name text,
    last_name text,
    company_name text,
    email text,
    phone text,
    address_line1 text,
    address_line2 text,
    city text,
    state text,
    postal_code text,
    source_created_at timestamptz,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint customers_external unique (partner_id, shop_id, external_id)
);

create table if not exists prod_sms.vehicles (
    id uuid primary key,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    customer_id uuid not null references prod_sms.customers (id),
    vin text,
    year integer,
    make text,
    model text,
    trim text,
    color text,
    license_plate text,
    license_state text,
    odometer bigint,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint vehicles_external unique (partner_id, shop_id, external_id)
);

create index if not exists vehicles_customer on prod_sms.vehicles (customer_id);

create table if not exists prod_sms.invoices (
    id uuid primary key,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    is_imported boolean not null default true,
    customer_id uuid not null references prod_sms.customers (id),
    vehicle_id uuid references prod_sms.vehicles (id),
    invoice_number text not null,
    document_type text not null,
    status text not null,
    invoice_date date not null,
    subtotal numeric(14, 2),
    tax_total numeric(14, 2),
    total numeric(14, 2),
    odometer_in bigint,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint invoices_external unique (partner_id, shop_id, external_id)
);

create index if not exists invoices_customer on prod_sms.invoices (customer_id);
create index if not exists invoices_vehicle on prod_sms.invoices (vehicle_id);

create table if not exists prod_sms.line_items (
    id uuid primary key,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    invoice_id uuid not null references prod_sms.invoices (id),
    parent_line_item_id uuid references prod_sms.line_items (id),
    line_type text not null,
    description text,
    part_number text,
    quantity numeric(24, 6),
    unit_price numeric(14, 2),
    line_total numeric(14, 2),
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint line_items_external unique (partner_id, shop_id, external_id)
);

create index if not exists line_items_invoice on prod_sms.line_items (invoice_id);
create index if not exists line_items_parent on prod_sms.line_items (parent_line_item_id);

create table if not exists prod_sms.payments (
    id uuid primary key,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    invoice_id uuid not null references prod_sms.invoices (id),
    payment_date date not null,
    amount numeric(14, 2) not null,
    method text not null,
    reference text,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint payments_external unique (partner_id, shop_id, external_id)
);

create index if not exists payments_invoice on prod_sms.payments (invoice_id);

create table if not exists prod_sms.inventory_parts (
    id uuid primary key,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    part_number text not null,
    description text,
    quantity_on_hand numeric(24, 6),
    cost numeric(14, 2),
    price numeric(14, 2),
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint inventory_parts_external unique (partner_id, shop_id, external_id)
);

create table if not exists prod_sms.suppliers (
    id uuid primary key,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    name text not null,
    phone text,
    email text,
    account_number text,
    address_line1 text,
    city text,
    state text,
    postal_code text,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint suppliers_external unique (partner_id, shop_id, external_id)
);
