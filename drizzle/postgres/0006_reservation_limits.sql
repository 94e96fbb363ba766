-- A request admitted on several limits holds a reservation row per limit. Rows written before
-- (leases and reservations of keys with one limit) are the 5h limit's.
ALTER TABLE "reservations" ADD COLUMN "limit_name" text DEFAULT '5h' NOT NULL;