-- One row per customer: the store they order from most (ties go to the lower store id), for the
-- Send Group call that makes the customer a member of that store's group.
WITH visits AS (
    SELECT
        customer AS customer_id,
        store_id,
        COUNT(*) AS orders_at_store
    FROM raw_orders
    GROUP BY customer, store_id
),

ranked AS (
    SELECT
        customer_id,
        store_id,
        ROW_NUMBER() OVER (
            PARTITION BY customer_id ORDER BY orders_at_store DESC, store_id
        ) AS store_rank
    FROM visits
)

SELECT
    ranked.customer_id,
    ranked.store_id
FROM ranked
INNER JOIN raw_customers AS customers ON customers.id = ranked.customer_id
WHERE ranked.store_rank = 1
