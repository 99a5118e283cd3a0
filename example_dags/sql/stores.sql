-- One row per store: the group traits for Send Group.
SELECT
    id AS store_id,
    -- The tracking API needs a userId or anonymousId on every call. A store's own traits are sent from a
    -- per-store anonymous id, so a change to a store does not touch any customer's profile.
    'store-' || id AS store_anonymous_id,
    name,
    opened_at,
    tax_rate
FROM raw_stores
