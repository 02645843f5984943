-- schema version: 2
-- Production-facing tables of contract sms_v1, keyed by the crosswalk's internal
-- UUID, relationships as internal UUIDs. Written only by the publish step, in one
-- transaction per load. Creates the current version from nothing, every statement
-- idempotent; sms_v1.upgrades/<k>.sql brings a database of version k-1 to k.
--
-- Every primary, unique and foreign key leads with shop_key, the shop's number
-- in loader_registry.shops: a load writes one region of each index (a new
-- shop's at its end) rather than pages all over indexes that grow with every
-- shop, and the tables can be distributed by shop (Citus) or hash-partitioned
-- by it, which both need the key in every constraint. Look rows up by
-- (shop_key, id) or (shop_key, external_id).
-- Number columns hold exactly what the contract's types (`types` in sms_v1.yaml)
-- let through staging: int bigint, decimal numeric(24, 6), money numeric(14, 2).
create schema if not exists prod_sms;

create table if not exists prod_sms.customers (
    id uuid not null,
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
    first_load_id text not null,
    shop_key bigint not null,
    constraint customers_pkey primary key (shop_key, id),
    constraint customers_external unique (shop_key, external_id)
);

create table if not exists prod_sms.vehicles (
    id uuid not null,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    customer_id uuid not null,
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
    first_load_id text not null,
    shop_key bigint not null,
    constraint vehicles_pkey primary key (shop_key, id),
    constraint vehicles_customer_id_fkey foreign key (shop_key, customer_id)
        references prod_sms.customers (shop_key, id),
    constraint vehicles_external unique (shop_key, external_id)
);

create index if not exists vehicles_customer on prod_sms.vehicles (shop_key, customer_id);

create table if not exists prod_sms.invoices (
    id uuid not null,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    is_imported boolean not null default true,
    customer_id uuid not null,
    vehicle_id uuid,
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
    first_load_id text not null,
    shop_key bigint not null,
    constraint invoices_pkey primary key (shop_key, id),
    constraint invoices_customer_id_fkey foreign key (shop_key, customer_id)
        references prod_sms.customers (shop_key, id),
    constraint invoices_vehicle_id_fkey foreign key (shop_key, vehicle_id)
        references prod_sms.vehicles (shop_key, id),
    constraint invoices_external unique (shop_key, external_id)
);

create index if not exists invoices_customer on prod_sms.invoices (shop_key, customer_id);
create index if not exists invoices_vehicle on prod_sms.invoices (shop_key, vehicle_id);

create table if not exists prod_sms.line_items (
    id uuid not null,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    invoice_id uuid not null,
    parent_line_item_id uuid,
    line_type text not null,
    description text,
    part_number text,
    quantity numeric(24, 6),
    unit_price numeric(14, 2),
    line_total numeric(14, 2),
    created_at timestamptz not null,
    updated_at timestamptz not null,
    first_load_id text not null,
    shop_key bigint not null,
    constraint line_items_pkey primary key (shop_key, id),
    constraint line_items_invoice_id_fkey foreign key (shop_key, invoice_id)
        references prod_sms.invoices (shop_key, id),
    constraint line_items_parent_line_item_id_fkey foreign key (shop_key, parent_line_item_id)
        references prod_sms.line_items (shop_key, id),
    constraint line_items_external unique (shop_key, external_id)
);

create index if not exists line_items_invoice on prod_sms.line_items (shop_key, invoice_id);
create index if not exists line_items_parent on prod_sms.line_items (shop_key, parent_line_item_id);

create table if not exists prod_sms.payments (
    id uuid not null,
    partner_id text not null,
    shop_id text not null,
    external_id text not null,
    source text not null default 'import',
    load_id text not null,
    invoice_id uuid not null,
    payment_date date not null,
    amount numeric(14, 2) not null,
    method text not null,
    reference text,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    first_load_id text not null,
    shop_key bigint not null,
    constraint payments_pkey primary key (shop_key, id),
    constraint payments_invoice_id_fkey foreign key (shop_key, invoice_id)
        references prod_sms.invoices (shop_key, id),
    constraint payments_external unique (shop_key, external_id)
);

create index if not exists payments_invoice on prod_sms.payments (shop_key, invoice_id);

create table if not exists prod_sms.inventory_parts (
    id uuid not null,
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
    first_load_id text not null,
    shop_key bigint not null,
    constraint inventory_parts_pkey primary key (shop_key, id),
    constraint inventory_parts_external unique (shop_key, external_id)
);

create table if not exists prod_sms.suppliers (
    id uuid not null,
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
    first_load_id text not null,
    shop_key bigint not null,
    constraint suppliers_pkey primary key (shop_key, id),
    constraint suppliers_external unique (shop_key, external_id)
);

-- (partner, shop, entity, external id) -> deterministic internal id, for
-- readers: a view, not a second copy of every production row's key. The
-- internal id is a function of the external key (an md5 of it), and each
-- production table already holds the external key, the load that first brought
-- a row and the one that last changed it; keeping a table of them cost a first
-- load a write per row and a reload an update of every row it saw.
create or replace view prod_sms.id_crosswalk as
    select
        id as internal_id,
        partner_id,
        shop_id,
        'customers'::text as entity_type,
        external_id,
        first_load_id,
        load_id as last_load_id,
        created_at as first_seen_at,
        updated_at as last_seen_at,
        shop_key
    from prod_sms.customers

    union all

    select
        id as internal_id,
        partner_id,
        shop_id,
        'vehicles'::text as entity_type,
        external_id,
        first_load_id,
        load_id as last_load_id,
        created_at as first_seen_at,
        updated_at as last_seen_at,
        shop_key
    from prod_sms.vehicles

    union all

    select
        id as internal_id,
        partner_id,
        shop_id,
        'invoices'::text as entity_type,
        external_id,
        first_load_id,
        load_id as last_load_id,
        created_at as first_seen_at,
        updated_at as last_seen_at,
        shop_key
    from prod_sms.invoices

    union all

    select
        id as internal_id,
        partner_id,
        shop_id,
        'line_items'::text as entity_type,
        external_id,
        first_load_id,
        load_id as last_load_id,
        created_at as first_seen_at,
        updated_at as last_seen_at,
        shop_key
    from prod_sms.line_items

    union all

    select
        id as internal_id,
        partner_id,
        shop_id,
        'payments'::text as entity_type,
        external_id,
        first_load_id,
        load_id as last_load_id,
        created_at as first_seen_at,
        updated_at as last_seen_at,
        shop_key
    from prod_sms.payments

    union all

    select
        id as internal_id,
        partner_id,
        shop_id,
        'inventory_parts'::text as entity_type,
        external_id,
        first_load_id,
        load_id as last_load_id,
        created_at as first_seen_at,
        updated_at as last_seen_at,
        shop_key
    from prod_sms.inventory_parts

    union all

    select
        id as internal_id,
        partner_id,
        shop_id,
        'suppliers'::text as entity_type,
        external_id,
        first_load_id,
        load_id as last_load_id,
        created_at as first_seen_at,
        updated_at as last_seen_at,
        shop_key
    from prod_sms.suppliers;
