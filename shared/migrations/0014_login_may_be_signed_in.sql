-- A login step marks its row before it sends its sign-in (auth.signIn or
-- auth.checkPassword) and clears the mark once an answer shows the key is not signed in.
-- An abandoned login still marked may hold a key signed in at Telegram that nobody else
-- stores: before it is dropped, its key is checked (and logged out if signed in).
-- login_checks_failed counts the checks that reached no one, so that a DC gone for good
-- does not keep the row for ever. Logins pending before this migration were never
-- marked, whatever their steps met: the ones holding a session are checked too.
ALTER TABLE accounts ADD COLUMN login_may_be_signed_in boolean NOT NULL DEFAULT false;
ALTER TABLE accounts ADD COLUMN login_checks_failed integer NOT NULL DEFAULT 0;
UPDATE accounts SET login_may_be_signed_in = true
    WHERE state = 'login_pending' AND session_ciphertext IS NOT NULL;
