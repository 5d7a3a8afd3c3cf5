import type * as Nodemailer from 'nodemailer';
import { redact } from '../db/connection';
import { errorMessage, UsageError } from '../errors';
import type { Rules } from '../types';
import type { Attachment } from './digest';

/** SMTP through nodemailer: one transport per `deliverPending` call, closed at its end. */

/**
 * `SMTP_URL` beats `settings.smtp.url` (environment > rules file); null: mail is not configured.
 * A URL that is not smtp:// or smtps:// is refused here, before any event is claimed: tried, it
 * would count an attempt against every event that needs mail.
 */
export function resolveSmtpUrl(rules: Rules, explicit?: string | null): string | null {
  const [url, source] = explicit
    ? [explicit, 'The SMTP URL']
    : process.env.SMTP_URL
      ? [process.env.SMTP_URL, 'SMTP_URL']
      : [rules.settings.smtp.url, 'settings.smtp.url in the rules file'];
  if (!url) return null;
  let parsed: URL | null = null;
  try {
    parsed = new URL(url);
  } catch {
    // reported below
  }
  if (!parsed || !['smtp:', 'smtps:'].includes(parsed.protocol) || parsed.hostname === '') {
    throw new UsageError(
      `${source} ${JSON.stringify(redact(url))} is not an SMTP URL; write smtp://[user:password@]host[:port] (smtps:// for TLS).`,
    );
  }
  return url;
}

export interface OutgoingMail {
  to: string[];
  subject: string;
  text: string;
  html: string;
  attachments?: Attachment[];
}

export interface Mailer {
  /** Sends one mail; resolves to the recipients the server refused while it took the others. */
  send(mail: OutgoingMail): Promise<string[]>;
  close(): void;
}

const TIMEOUTS = { connectionTimeout: 15_000, greetingTimeout: 15_000, socketTimeout: 60_000 };

/** A mail the server did not take: whom it was for, and what went wrong with the server. */
export class MailError extends Error {
  constructor(
    to: string[],
    /** The server and its error, with no recipient: what every later mail of the delivery is told. */
    readonly server: string,
    options: { cause: unknown },
  ) {
    super(`mail to ${to.join(', ')} through ${server}`, options);
  }
}

export function createMailer(url: string, from: string): Mailer {
  // Loaded on first use: only delivery needs it (13 MB that every other command would carry).
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { createTransport } = require('nodemailer') as typeof Nodemailer;
  // Pooled: one connection carries mail after mail (200 mails to a local server: 20.8 s with a
  // connection each, 0.45 s pooled); close() ends it once the delivery is done.
  const transport = createTransport({ url, pool: true, ...TIMEOUTS });
  const where = redact(url);
  return {
    async send(mail) {
      try {
        const info = await transport.sendMail({
          from,
          to: mail.to,
          subject: mail.subject,
          text: mail.text,
          html: mail.html,
          attachments: (mail.attachments ?? []).map((a) => ({
            filename: a.filename,
            content: a.content,
            contentType: a.contentType,
          })),
        });
        // A server that refuses every recipient fails the mail (above); one that refuses some sends
        // it to the others and says whom it refused.
        const rejected = (info.rejected ?? []) as (string | { address: string })[];
        return rejected.map((a) => (typeof a === 'string' ? a : a.address));
      } catch (err) {
        throw new MailError(mail.to, `${where}: ${errorMessage(err)}`, { cause: err });
      }
    },
    close() {
      transport.close();
    },
  };
}
