-- Version 1 -> 2: the crosswalk table becomes a view over the production
-- tables. Each row takes the first load the crosswalk recorded for it into a
-- new first_load_id column (its last writer where the crosswalk had no row,
-- which the publish step never left); every id and row stays as it was.

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
