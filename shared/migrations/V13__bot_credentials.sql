-- The credential that holds a bot: the token an admin issued for it
-- (POST /bots/{id}/token) or the token its agent registered with. A `bot`
-- token may change only the status of the bots it holds.
ALTER TABLE bots ADD COLUMN token_id uuid REFERENCES tokens(id) ON DELETE SET NULL;
CREATE INDEX bots_token_idx ON bots (token_id) WHERE token_id IS NOT NULL;
