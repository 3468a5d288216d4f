-- The click-id columns examples/all-platforms.toml reads, on top of shop.sql: each is stored from the
-- landing page's URL parameter or cookie, as the platform's README section says.
alter table public.orders
    add column sc_click_id      text,    -- Snapchat: the ScCid URL parameter
    add column epik             text,    -- Pinterest: the _epik cookie or epik URL parameter
    add column li_fat_id        text,    -- LinkedIn: the li_fat_id URL parameter or cookie
    add column rdt_cid          text,    -- Reddit: the rdt_cid URL parameter
    add column ob_click_id      text,    -- Outbrain: the {{OutbrainClickId}} macro
    add column taboola_click_id text;    -- Taboola: the {click_id} macro
