-- Phones are stored in E.164 with their '+', as logins are started with; imports used to
-- store Telegram's digits alone.
UPDATE accounts SET phone = '+' || phone WHERE phone ~ '^[0-9]+$';
