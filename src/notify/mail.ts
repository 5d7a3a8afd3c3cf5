import type * as Nodemailer from 'nodemailer';
import { redact } from '../db/connection';
import { errorMessage } from '../errors';
import type { Rules } from '../types';
import type { Attachment } from './digest';

/** SMTP through nodemailer: one transport per `deliverPending` call, closed at its end. */

/** `SMTP_URL` beats `settings.smtp.url` (environment > rules file); null: mail is not configured. */
export function resolveSmtpUrl(rules: Rules, explicit?: string | null): string | null {
  return explicit || process.env.SMTP_URL || rules.settings.smtp.url || null;
}

export interface OutgoingMail {
  to: string[];
  subject: string;
  text: string;
  html: string;
  attachments?: Attachment[];
}

export interface Mailer {
  send(mail: OutgoingMail): Promise<void>;
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
  const transport = createTransport({ url, ...TIMEOUTS });
  const where = redact(url);
  return {
    async send(mail) {
      try {
        await transport.sendMail({
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
      } catch (err) {
        throw new MailError(mail.to, `${where}: ${errorMessage(err)}`, { cause: err });
      }
    },
    close() {
      transport.close();
    },
  };
}
