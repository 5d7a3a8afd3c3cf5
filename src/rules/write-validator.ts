import fs from 'node:fs';
import path from 'node:path';
import { _ } from 'ajv';
import standaloneCode from 'ajv/dist/standalone';
import { createAjv, rulesSchemaHash, VALIDATOR_FILE } from './validate';
import RULES_SCHEMA from './rules.schema.json';

/**
 * Run by `npm run build` from dist: compiles the rules schema once and writes the validator's code
 * next to validate.js, which loads it instead of compiling the schema at every CLI start. The code
 * takes the formats from rule-formats.js by name, and records the schema it was compiled from.
 */
if (require.main === module) {
  const ajv = createAjv({ source: true, formats: _`require("./rule-formats").RULE_FORMATS` });
  const code = standaloneCode(ajv, ajv.compile(RULES_SCHEMA));
  const hash = `module.exports.schemaHash = ${JSON.stringify(rulesSchemaHash())};`;
  fs.writeFileSync(
    path.join(__dirname, VALIDATOR_FILE),
    `// Written by write-validator.js at build time.\n${code}\n${hash}\n`,
  );
}
