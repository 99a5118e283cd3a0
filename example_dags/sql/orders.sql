-- One row per order, for the Track event "Order Completed". Append-only: the operator reads only the
-- orders at or past the last synced ordered_at (sync_mode="incremental"). Amounts are stored in cents.
WITH order_items AS (
    SELECT
        order_id,
        COUNT(*) AS item_count
    FROM raw_items
    GROUP BY order_id
)

SELECT
    orders.id AS order_id,
    orders.customer AS customer_id,
    orders.ordered_at,
    CAST(orders.order_total AS DOUBLE PRECISION) / 100 AS order_total,
    CAST(orders.subtotal AS DOUBLE PRECISION) / 100 AS subtotal,
    CAST(orders.tax_paid AS DOUBLE PRECISION) / 100 AS tax_paid,
    COALESCE(order_items.item_count, 0) AS item_count,
    stores.name AS store_name
FROM raw_orders AS orders
LEFT JOIN order_items ON order_items.order_id = orders.id
LEFT JOIN raw_stores AS stores ON stores.id = orders.store_id
