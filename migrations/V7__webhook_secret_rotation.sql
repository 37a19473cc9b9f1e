-- Webhook secret rotation (issue 16): after `POST /v1/webhooks/{id}/rotate-secret`
-- the previous secret keeps signing (a second `v1,` signature) until
-- `previous_secret_expires_at`, so receivers can switch without dropping
-- deliveries. Sealed like `secret` (see shared/src/crypto.rs).
ALTER TABLE webhooks ADD COLUMN previous_secret text;
ALTER TABLE webhooks ADD COLUMN previous_secret_expires_at timestamptz;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_previous_secret_both
    CHECK ((previous_secret IS NULL) = (previous_secret_expires_at IS NULL));
