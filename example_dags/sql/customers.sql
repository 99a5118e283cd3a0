-- One row per customer: the person's traits for Send Identify and their email subscriptions for
-- Send Subscriptions. Portable SQL: runs unchanged on SQLite and PostgreSQL.
WITH order_stats AS (
    SELECT
        customer AS customer_id,
        MIN(ordered_at) AS first_order,
        MAX(ordered_at) AS most_recent_order,
        COUNT(*) AS number_of_orders,
        SUM(order_total) AS lifetime_spend_cents
    FROM raw_orders
    GROUP BY customer
)

SELECT
    customers.id AS customer_id,
    customers.name AS name,
    -- A stable, unique address on the reserved example domain (RFC 2606): "dr.jane.doe.1a2b@example.com".
    LOWER(REPLACE(REPLACE(customers.name, '.', ''), ' ', '.'))
        || '.' || SUBSTR(customers.id, 1, 4) || '@example.com' AS email,
    order_stats.first_order,
    order_stats.most_recent_order,
    COALESCE(order_stats.number_of_orders, 0) AS number_of_orders,
    CAST(COALESCE(order_stats.lifetime_spend_cents, 0) AS DOUBLE PRECISION) / 100 AS lifetime_value,
    -- Receipts go to every customer; the newsletter only to regulars (52+ orders: weekly for a year).
    'subscribed' AS email_subscription_status,
    CASE
        WHEN COALESCE(order_stats.number_of_orders, 0) >= 52 THEN 'subscribed'
        ELSE 'did_not_subscribe'
    END AS newsletter_status
FROM raw_customers AS customers
LEFT JOIN order_stats ON order_stats.customer_id = customers.id
