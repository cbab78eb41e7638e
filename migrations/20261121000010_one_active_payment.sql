-- One active payment per booking, decided by the write side.
--
-- A booking's pending or succeeded payment blocks another one; a failed one
-- frees the booking. The rule needs a fact about other aggregates (the booking's
-- other payments), and the write side must not ask an eventually consistent read
-- model for it, so it keeps this lookup table itself. The trigger below fills it
-- from each payment event in the transaction that stores the event, so a claim
-- exists exactly when its PaymentInitiated does: two patients' tabs racing to pay
-- one booking cannot both commit, whichever process they run in.
CREATE TABLE booking_active_payments
(
    booking_id uuid PRIMARY KEY,
    payment_id uuid NOT NULL UNIQUE
);

CREATE FUNCTION claim_booking_payment() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF NEW.event_type = 'PaymentInitiated' THEN
        BEGIN
            INSERT INTO booking_active_payments (booking_id, payment_id)
            VALUES ((NEW.payload -> 'PaymentInitiated' ->> 'booking_id')::uuid,
                    NEW.aggregate_id::uuid);
        EXCEPTION
            WHEN unique_violation THEN
                -- Not a unique violation: the event store reads those as a
                -- version clash and retries, which can never succeed here.
                RAISE EXCEPTION 'the booking already has an active payment'
                    USING ERRCODE = 'check_violation',
                          CONSTRAINT = 'one_active_payment_per_booking';
        END;
    ELSIF NEW.event_type = 'PaymentFailed' THEN
        DELETE FROM booking_active_payments WHERE payment_id = NEW.aggregate_id::uuid;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_claim_booking_payment
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Payment')
    EXECUTE FUNCTION claim_booking_payment();

-- Payments stored before this rule: each booking keeps its succeeded payment,
-- else its latest payment that has not failed.
INSERT INTO booking_active_payments (booking_id, payment_id)
SELECT DISTINCT ON (booking_id) booking_id, payment_id
  FROM (SELECT (i.payload -> 'PaymentInitiated' ->> 'booking_id')::uuid AS booking_id,
               i.aggregate_id::uuid AS payment_id,
               EXISTS (SELECT 1 FROM events s
                        WHERE s.aggregate_type = 'Payment' AND s.aggregate_id = i.aggregate_id
                          AND s.event_type = 'PaymentSucceeded') AS succeeded,
               i.event_id
          FROM events i
         WHERE i.aggregate_type = 'Payment' AND i.event_type = 'PaymentInitiated'
           AND NOT EXISTS (SELECT 1 FROM events f
                            WHERE f.aggregate_type = 'Payment' AND f.aggregate_id = i.aggregate_id
                              AND f.event_type = 'PaymentFailed')) AS candidates
 ORDER BY booking_id, succeeded DESC, event_id DESC;
