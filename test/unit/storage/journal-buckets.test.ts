// Journal lines of records counted against several limits: their buckets are kept and checksummed; older lines read as before.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { journalLine, readJournalFile } from '../../../src/storage/journal.js';
import { tempDir } from '../../helpers/temp.js';

const record = { id: 'r1', keyId: 'key_1', tokens: 250, at: 1_800_000_000_000 };
const weekly = { ...record, id: 'r2', buckets: [['5h', 1_799_999_980_000], ['7d', 1_799_998_200_000]] as [string, number][] };

function read(lines: string[]) {
  const path = join(tempDir(), 'journal-00000001.ndjson');
  writeFileSync(path, lines.join(''));
  return readJournalFile(path);
}

describe('journal lines with buckets', () => {
  it('round-trips a record with its buckets, and one without them as it always was', () => {
    expect(journalLine(record)).not.toContain('buckets');
    expect(read([journalLine(record), journalLine(weekly)])).toEqual({ records: [record, weekly], problems: [] });
  });

  it('catches a bucket changed inside a valid line, and refuses buckets that are not [limit, start] pairs', () => {
    const changed = journalLine(weekly).replace('"7d"', '"5h"');
    const malformed = journalLine(weekly).replace('[["5h",1799999980000],', '[["5h"],');
    const { records, problems } = read([changed, malformed]);
    expect(records).toEqual([]);
    expect(problems.map((problem) => problem.reason)).toEqual(['checksum mismatch', 'not a usage record']);
  });
});
