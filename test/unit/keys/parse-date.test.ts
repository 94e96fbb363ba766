// parseDate(): ISO 8601 dates and date-times with a time zone in, epoch milliseconds out; anything else refused.
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../src/errors.js';
import { isoDateMs, parseDate } from '../../../src/keys/validate.js';

describe('parseDate', () => {
  it('reads dates and date-times with offsets', () => {
    expect(parseDate('2027-01-01', 'expiry_date')).toBe(Date.UTC(2027, 0, 1));
    expect(parseDate('2028-02-29T12:00:00+02:00', 'expiry_date')).toBe(Date.UTC(2028, 1, 29, 10));
    expect(parseDate('2027-01-01T00:00Z', 'expiry_date')).toBe(Date.UTC(2027, 0, 1));
    expect(parseDate('2027-01-01T00:00:00.250Z', 'expiry_date')).toBe(Date.UTC(2027, 0, 1) + 250);
    // ISO 8601's basic offset form, without the colon.
    expect(parseDate('2027-01-01T12:00:00+0200', 'expiry_date')).toBe(Date.UTC(2027, 0, 1, 10));
    expect(parseDate('2027-01-01T12:00-0530', 'expiry_date')).toBe(Date.UTC(2027, 0, 1, 17, 30));
  });

  it.each(['2027-02-30', '2027-02-29', '2027-13-01', '2027-00-10', '2027-04-31T00:00:00Z', 'tomorrow', '01/02/2027', '', '2027-01-01T00:00', '2027-01-01T00:00:00', '2027-01-01 12:00 PST', 'Fri, 01 Jan 2027 00:00:00 GMT', '1798761600000', '2027-01-01T12:00:00+02', '2027-01-01T12:00:00+2400', '2027-01-01T24:00:00Z'])('refuses %j, naming the field', (value) => {
    expect(() => parseDate(value, 'expiry_date')).toThrow(ValidationError);
    expect(() => parseDate(value, 'expiry_date')).toThrow(/^expiry_date: /);
  });

  it('takes only strings: epoch milliseconds are not a date here', () => {
    expect(isoDateMs(Date.UTC(2027, 0, 1))).toBeNaN();
    expect(isoDateMs(null)).toBeNaN();
    expect(isoDateMs('2027-01-01')).toBe(Date.UTC(2027, 0, 1));
  });
});
