-- Version 1 -> 2, keeping every row and id:
--
-- The crosswalk table becomes a view over the production tables. Each row
-- takes the first load the crosswalk recorded for it into a new first_load_id
-- column (its last writer where the crosswalk had no row, which the publish
-- step never left).
--
-- Every key leads with shop_key, the shop's number in loader_registry.shops.
-- Each shop with production rows is numbered (in partner and shop order), its
-- rows take its number, and every primary, unique and foreign key and every
-- index on a reference is made again led by it.

alter table prod_sms.customers add column first_load_id text;

update prod_sms.customers as t
set first_load_id = coalesce((
    select c.first_load_id from prod_sms.id_crosswalk as c
    where
        c.partner_id = t.partner_id and c.shop_id = t.shop_id and c.entity_type = 'customers'
        and c.external_id = t.external_id
), t.load_id);

alter table prod_sms.customers alter column first_load_id set not null;

alter table prod_sms.vehicles add column first_load_id text;

update prod_sms.vehicles as t
set first_load_id = coalesce((
    select c.first_load_id from prod_sms.id_crosswalk as c
    where
        c.partner_id = t.partner_id and c.shop_id = t.shop_id and c.entity_type = 'vehicles'
        and c.external_id = t.external_id
), t.load_id);

alter table prod_sms.vehicles alter column first_load_id set not null;

alter table prod_sms.invoices add column first_load_id text;

update prod_sms.invoices as t
set first_load_id = coalesce((
    select c.first_load_id from prod_sms.id_crosswalk as c
    where
        c.partner_id = t.partner_id and c.shop_id = t.shop_id and c.entity_type = 'invoices'
        and c.external_id = t.external_id
), t.load_id);

alter table prod_sms.invoices alter column first_load_id set not null;

alter table prod_sms.line_items add column first_load_id text;

update prod_sms.line_items as t
set first_load_id = coalesce((
    select c.first_load_id from prod_sms.id_crosswalk as c
    where
        c.partner_id = t.partner_id and c.shop_id = t.shop_id and c.entity_type = 'line_items'
        and c.external_id = t.external_id
), t.load_id);

alter table prod_sms.line_items alter column first_load_id set not null;

alter table prod_sms.payments add column first_load_id text;

update prod_sms.payments as t
set first_load_id = coalesce((
    select c.first_load_id from prod_sms.id_crosswalk as c
    where
        c.partner_id = t.partner_id and c.shop_id = t.shop_id and c.entity_type = 'payments'
        and c.external_id = t.external_id
), t.load_id);

alter table prod_sms.payments alter column first_load_id set not null;

alter table prod_sms.inventory_parts add column first_load_id text;

update prod_sms.inventory_parts as t
set first_load_id = coalesce((
    select c.first_load_id from prod_sms.id_crosswalk as c
    where
        c.partner_id = t.partner_id and c.shop_id = t.shop_id and c.entity_type = 'inventory_parts'
        and c.external_id = t.external_id
), t.load_id);

alter table prod_sms.inventory_parts alter column first_load_id set not null;

alter table prod_sms.suppliers add column first_load_id text;

update prod_sms.suppliers as t
set first_load_id = coalesce((
    select c.first_load_id from prod_sms.id_crosswalk as c
    where
        c.partner_id = t.partner_id and c.shop_id = t.shop_id and c.entity_type = 'suppliers'
        and c.external_id = t.external_id
), t.load_id);

alter table prod_sms.suppliers alter column first_load_id set not null;

drop table prod_sms.id_crosswalk;

insert into loader_registry.shops (partner_id, shop_id)
select partner_id, shop_id from (
    select partner_id, shop_id from prod_sms.customers
    union
    select partner_id, shop_id from prod_sms.vehicles
    union
    select partner_id, shop_id from prod_sms.invoices
    union
    select partner_id, shop_id from prod_sms.line_items
    union
    select partner_id, shop_id from prod_sms.payments
    union
    select partner_id, shop_id from prod_sms.inventory_parts
    union
    select partner_id, shop_id from prod_sms.suppliers
) as shops
order by partner_id, shop_id
on conflict (partner_id, shop_id) do nothing;

alter table prod_sms.customers add column shop_key bigint;
update prod_sms.customers as t set shop_key = s.shop_key
from loader_registry.shops as s
where s.partner_id = t.partner_id and s.shop_id = t.shop_id;
alter table prod_sms.customers alter column shop_key set not null;

alter table prod_sms.vehicles add column shop_key bigint;
update prod_sms.vehicles as t set shop_key = s.shop_key
from loader_registry.shops as s
where s.partner_id = t.partner_id and s.shop_id = t.shop_id;
alter table prod_sms.vehicles alter column shop_key set not null;

alter table prod_sms.invoices add column shop_key bigint;
update prod_sms.invoices as t set shop_key = s.shop_key
from loader_registry.shops as s
where s.partner_id = t.partner_id and s.shop_id = t.shop_id;
alter table prod_sms.invoices alter column shop_key set not null;

alter table prod_sms.line_items add column shop_key bigint;
update prod_sms.line_items as t set shop_key = s.shop_key
from loader_registry.shops as s
where s.partner_id = t.partner_id and s.shop_id = t.shop_id;
alter table prod_sms.line_items alter column shop_key set not null;

alter table prod_sms.payments add column shop_key bigint;
update prod_sms.payments as t set shop_key = s.shop_key
from loader_registry.shops as s
where s.partner_id = t.partner_id and s.shop_id = t.shop_id;
alter table prod_sms.payments alter column shop_key set not null;

alter table prod_sms.inventory_parts add column shop_key bigint;
update prod_sms.inventory_parts as t set shop_key = s.shop_key
from loader_registry.shops as s
where s.partner_id = t.partner_id and s.shop_id = t.shop_id;
alter table prod_sms.inventory_parts alter column shop_key set not null;

alter table prod_sms.suppliers add column shop_key bigint;
update prod_sms.suppliers as t set shop_key = s.shop_key
from loader_registry.shops as s
where s.partner_id = t.partner_id and s.shop_id = t.shop_id;
alter table prod_sms.suppliers alter column shop_key set not null;

alter table prod_sms.vehicles drop constraint vehicles_customer_id_fkey;
alter table prod_sms.invoices drop constraint invoices_customer_id_fkey;
alter table prod_sms.invoices drop constraint invoices_vehicle_id_fkey;
alter table prod_sms.line_items drop constraint line_items_invoice_id_fkey;
alter table prod_sms.line_items drop constraint line_items_parent_line_item_id_fkey;
alter table prod_sms.payments drop constraint payments_invoice_id_fkey;

alter table prod_sms.customers
drop constraint customers_pkey,
drop constraint customers_external,
add constraint customers_pkey primary key (shop_key, id),
add constraint customers_external unique (shop_key, external_id);

alter table prod_sms.vehicles
drop constraint vehicles_pkey,
drop constraint vehicles_external,
add constraint vehicles_pkey primary key (shop_key, id),
add constraint vehicles_external unique (shop_key, external_id);

alter table prod_sms.invoices
drop constraint invoices_pkey,
drop constraint invoices_external,
add constraint invoices_pkey primary key (shop_key, id),
add constraint invoices_external unique (shop_key, external_id);

alter table prod_sms.line_items
drop constraint line_items_pkey,
drop constraint line_items_external,
add constraint line_items_pkey primary key (shop_key, id),
add constraint line_items_external unique (shop_key, external_id);

alter table prod_sms.payments
drop constraint payments_pkey,
drop constraint payments_external,
add constraint payments_pkey primary key (shop_key, id),
add constraint payments_external unique (shop_key, external_id);

alter table prod_sms.inventory_parts
drop constraint inventory_parts_pkey,
drop constraint inventory_parts_external,
add constraint inventory_parts_pkey primary key (shop_key, id),
add constraint inventory_parts_external unique (shop_key, external_id);

alter table prod_sms.suppliers
drop constraint suppliers_pkey,
drop constraint suppliers_external,
add constraint suppliers_pkey primary key (shop_key, id),
add constraint suppliers_external unique (shop_key, external_id);

drop index prod_sms.vehicles_customer;
create index vehicles_customer on prod_sms.vehicles (shop_key, customer_id);

drop index prod_sms.invoices_customer;
create index invoices_customer on prod_sms.invoices (shop_key, customer_id);

drop index prod_sms.invoices_vehicle;
create index invoices_vehicle on prod_sms.invoices (shop_key, vehicle_id);

drop index prod_sms.line_items_invoice;
create index line_items_invoice on prod_sms.line_items (shop_key, invoice_id);

drop index prod_sms.line_items_parent;
create index line_items_parent on prod_sms.line_items (shop_key, parent_line_item_id);

drop index prod_sms.payments_invoice;
create index payments_invoice on prod_sms.payments (shop_key, invoice_id);

alter table prod_sms.vehicles add constraint vehicles_customer_id_fkey foreign key (shop_key, customer_id)
references prod_sms.customers (shop_key, id);

alter table prod_sms.invoices add constraint invoices_customer_id_fkey foreign key (shop_key, customer_id)
references prod_sms.customers (shop_key, id);

alter table prod_sms.invoices add constraint invoices_vehicle_id_fkey foreign key (shop_key, vehicle_id)
references prod_sms.vehicles (shop_key, id);

alter table prod_sms.line_items add constraint line_items_invoice_id_fkey foreign key (shop_key, invoice_id)
references prod_sms.invoices (shop_key, id);

alter table prod_sms.line_items add constraint line_items_parent_line_item_id_fkey foreign key (shop_key, parent_line_item_id)
references prod_sms.line_items (shop_key, id);

alter table prod_sms.payments add constraint payments_invoice_id_fkey foreign key (shop_key, invoice_id)
references prod_sms.invoices (shop_key, id);
