// parseDate(): ISO 8601 dates and date-times in, epoch milliseconds out; days that do not exist refused.
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../src/errors.js';
import { parseDate } from '../../../src/keys/validate.js';

describe('parseDate', () => {
  it('reads dates and date-times with offsets', () => {
    expect(parseDate('2027-01-01', 'expiry_date')).toBe(Date.UTC(2027, 0, 1));
    expect(parseDate('2028-02-29T12:00:00+02:00', 'expiry_date')).toBe(Date.UTC(2028, 1, 29, 10));
    expect(parseDate('2027-01-01T00:00Z', 'expiry_date')).toBe(Date.UTC(2027, 0, 1));
    expect(parseDate('2027-01-01T00:00:00.250Z', 'expiry_date')).toBe(Date.UTC(2027, 0, 1) + 250);
  });

  it.each(['2027-02-30', '2027-02-29', '2027-13-01', '2027-00-10', '2027-04-31T00:00:00Z', 'tomorrow', '01/02/2027', '', '2027-01-01T00:00', '2027-01-01T00:00:00', '2027-01-01 12:00 PST', 'Fri, 01 Jan 2027 00:00:00 GMT', '1798761600000'])('refuses %j, naming the field', (value) => {
    expect(() => parseDate(value, 'expiry_date')).toThrow(ValidationError);
    expect(() => parseDate(value, 'expiry_date')).toThrow(/^expiry_date: /);
  });
});
