CREATE INDEX `usage_buckets_bucket_start` ON `usage_buckets` (`bucket_start`);--> statement-breakpoint
CREATE INDEX `usage_records_recorded_at` ON `usage_records` (`recorded_at`);