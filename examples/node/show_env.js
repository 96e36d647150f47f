// Print whether each variable reads as a resolved secret through process.env, never its value.
//
// Usage: node show_env.js [NAME...]   (default: the keys of examples/secrets.json)

'use strict';

const DEFAULT_NAMES = [
  'DATABASE_URL',
  'API_KEY',
  'STRIPE_SECRET_KEY',
  'JWT_SIGNING_KEY',
  'REDIS_PASSWORD',
];
const SCHEMES = ['vault:', 'envproxy:'];

function describe(name) {
  const value = process.env[name];
  if (value === undefined) {
    return `${name}: not set`;
  }
  if (SCHEMES.some((scheme) => value.startsWith(scheme))) {
    // A reference names where the secret lives. It is not secret itself.
    return `${name}: unresolved reference (${value})`;
  }
  return `${name}: resolved (${Buffer.byteLength(value, 'utf8')} bytes)`;
}

const names = process.argv.slice(2);
for (const name of names.length > 0 ? names : DEFAULT_NAMES) {
  console.log(describe(name));
}
