CREATE TABLE "api_keys" (
	"id" text PRIMARY KEY NOT NULL,
	"key_hash" text NOT NULL,
	"key_prefix" text NOT NULL,
	"name" text NOT NULL,
	"model" text,
	"token_limit_per_5h" bigint NOT NULL,
	"expiry_date" bigint NOT NULL,
	"created_at" bigint NOT NULL,
	"last_used" bigint,
	"total_lifetime_tokens" bigint DEFAULT 0 NOT NULL,
	"total_requests" bigint DEFAULT 0 NOT NULL,
	CONSTRAINT "api_keys_key_hash_unique" UNIQUE("key_hash")
);
--> statement-breakpoint
CREATE TABLE "reservations" (
	"id" text PRIMARY KEY NOT NULL,
	"key_id" text NOT NULL,
	"tokens" bigint NOT NULL,
	"partial" boolean NOT NULL,
	"expires_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "usage_buckets" (
	"key_id" text NOT NULL,
	"bucket_start" bigint NOT NULL,
	"tokens" bigint NOT NULL,
	CONSTRAINT "usage_buckets_key_id_bucket_start_pk" PRIMARY KEY("key_id","bucket_start")
);
--> statement-breakpoint
CREATE TABLE "usage_records" (
	"id" text PRIMARY KEY NOT NULL,
	"key_id" text NOT NULL,
	"tokens" bigint NOT NULL,
	"recorded_at" bigint NOT NULL
);
--> statement-breakpoint
ALTER TABLE "reservations" ADD CONSTRAINT "reservations_key_id_api_keys_id_fk" FOREIGN KEY ("key_id") REFERENCES "public"."api_keys"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "usage_buckets" ADD CONSTRAINT "usage_buckets_key_id_api_keys_id_fk" FOREIGN KEY ("key_id") REFERENCES "public"."api_keys"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "reservations_key_id" ON "reservations" USING btree ("key_id");