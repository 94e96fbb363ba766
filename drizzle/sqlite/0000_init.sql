CREATE TABLE `api_keys` (
	`id` text PRIMARY KEY NOT NULL,
	`key_hash` text NOT NULL,
	`key_prefix` text NOT NULL,
	`name` text NOT NULL,
	`model` text,
	`token_limit_per_5h` integer NOT NULL,
	`expiry_date` integer NOT NULL,
	`created_at` integer NOT NULL,
	`last_used` integer,
	`total_lifetime_tokens` integer DEFAULT 0 NOT NULL,
	`total_requests` integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `api_keys_key_hash_unique` ON `api_keys` (`key_hash`);--> statement-breakpoint
CREATE TABLE `usage_buckets` (
	`key_id` text NOT NULL,
	`bucket_start` integer NOT NULL,
	`tokens` integer NOT NULL,
	PRIMARY KEY(`key_id`, `bucket_start`),
	FOREIGN KEY (`key_id`) REFERENCES `api_keys`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE TABLE `usage_records` (
	`id` text PRIMARY KEY NOT NULL,
	`key_id` text NOT NULL,
	`tokens` integer NOT NULL,
	`recorded_at` integer NOT NULL
);
