-- Filled in when the answer has been sent: tokens as the backend reported
-- them, and what the answer cost by the route's price (NULL when unknown).
ALTER TABLE decisions ADD COLUMN prompt_tokens INTEGER;
ALTER TABLE decisions ADD COLUMN completion_tokens INTEGER;
ALTER TABLE decisions ADD COLUMN cost_usd REAL;
ALTER TABLE decisions ADD COLUMN energy_wh REAL;
