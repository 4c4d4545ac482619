-- Orders as the order path (POST /api/v1/orders) stores them. An order acknowledged to a
-- client is in this table before the 2xx; client_order_id makes retries idempotent.
CREATE TABLE orders (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    client_order_id  TEXT NOT NULL,
    broker           TEXT NOT NULL,
    symbol           TEXT NOT NULL,
    side             TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type       TEXT NOT NULL CHECK (order_type IN ('market', 'limit')),
    quantity         NUMERIC(20, 8) NOT NULL CHECK (quantity > 0),
    limit_price      NUMERIC(20, 8) CHECK (limit_price IS NULL OR limit_price > 0),
    status           TEXT NOT NULL DEFAULT 'new'
                     CHECK (status IN ('new', 'accepted', 'filled', 'cancelled', 'rejected', 'timed_out')),
    reject_reason    TEXT,
    broker_order_id  TEXT,
    filled_quantity  NUMERIC(20, 8),
    fill_price       NUMERIC(20, 8),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT orders_client_order_id_key UNIQUE (client_order_id),
    CONSTRAINT orders_limit_price_matches_type
        CHECK ((order_type = 'limit') = (limit_price IS NOT NULL))
);

CREATE INDEX orders_status_idx ON orders (status) WHERE status IN ('new', 'accepted');
