// The page's frame: its settings, who is signed in, and which view shows.
//
// A view is a module under views/ with { route, title, render(context, params, container,
// ...path) }; render may return a function that ends what the view left running (a stream),
// called when another screen replaces it. Adding a panel is adding a module to VIEWS (and a
// link to the nav in index.html).

import { createApi } from './api.js';
import { destroyCharts } from './charts.js';
import { today } from './dates.js';
import { h, show } from './dom.js';
import { watchUsage } from './live.js';
import { devTokenSession, firebaseSignIn, restoreDevToken, signInFailure } from './session.js';
import activity from './views/activity.js';
import audit from './views/audit.js';
import month from './views/month.js';
import notifications from './views/notifications.js';
import overrides from './views/overrides.js';
import summary from './views/summary.js';
import user from './views/user.js';
import users from './views/users.js';
import whatIf from './views/what-if.js';

const VIEWS = new Map([summary, users, month, user, overrides, audit, whatIf, activity, notifications].map((view) => [view.route, view]));
const $ = (id) => document.getElementById(id);

let config;
let firebase = null;
let session = null;
/** Whether the first screen is up: from then on, a new screen takes the keyboard's focus. */
let started = false;
/** Ends what the view on screen left running; null when nothing runs. */
let leaveView = null;

const api = createApi({
  session: () => session,
  onExpired: () => signOut('Your sign-in has expired. Sign in again.'),
  onForbidden: (error) => refuse(error),
});

const context = {
  api,
  today: () => today(config.timeZone),
  /** Watches a user's usage until the returned watch is stopped (see live.js). */
  watchUsage(userId, { onUsage, onState }) {
    return watchUsage({
      session: () => session,
      userId,
      onUsage,
      onState(state, detail) {
        onState(state, detail);
        if (state === 'expired' && session) signOut('Your sign-in has expired. Sign in again.');
      },
    });
  },
  /** Shows `route` with `params`, as a link would. */
  navigate(route, params = {}) {
    const search = new URLSearchParams(Object.entries(params).filter(([, value]) => value !== '' && value != null));
    const text = search.toString();
    location.hash = `#/${route}${text ? `?${text}` : ''}`;
  },
};

async function boot() {
  $('skip-link').addEventListener('click', (event) => {
    event.preventDefault();
    $('main').focus();
  });
  $('sign-out').addEventListener('click', () => signOut('Signed out.'));
  $('password-form').addEventListener('submit', signInWithPassword);
  $('dev-token-form').addEventListener('submit', signInWithDevToken);
  window.addEventListener('hashchange', route);

  try {
    const response = await fetch('/dashboard/config.json', { cache: 'no-store' });
    if (!response.ok) throw new Error(`the service answered ${response.status}`);
    config = await response.json();
    if (config.firebase) firebase = await firebaseSignIn(config.firebase);
  } catch (error) {
    show($('booting'), `The dashboard could not start: ${error.message}. Reload to try again.`);
    $('booting').classList.add('state-error');
    return;
  }
  $('booting').hidden = true;
  const restored = (await firebase?.restore()) ?? (config.devTokens ? restoreDevToken() : null);
  if (restored) enter(restored);
  else showSignIn();
  started = true;
}

/** Moves the reader to a new screen's heading, as a page load would; the first screen is
 *  read from the top, skip link first. */
function focusHeading(heading) {
  if (started) heading?.focus();
}

/** Ends the view on screen: its charts and whatever it left running. */
function leave(container) {
  leaveView?.();
  leaveView = null;
  destroyCharts(container);
}

function showSignIn(note) {
  session = null;
  leave($('view'));
  show($('view'));
  $('nav').hidden = true;
  $('account').hidden = true;
  $('password-form').hidden = !firebase;
  $('emulator-note').hidden = !config.firebase?.authEmulatorUrl;
  $('dev-token-form').hidden = !config.devTokens;
  $('no-sign-in').hidden = Boolean(firebase || config.devTokens);
  $('sign-in-note').hidden = !note;
  $('sign-in-note').textContent = note ?? '';
  $('sign-in').hidden = false;
  document.title = 'Sign in · token-limits admin';
  focusHeading($('sign-in-title'));
}

function enter(signedIn) {
  session = signedIn;
  $('sign-in').hidden = true;
  $('password').value = '';
  $('dev-token').value = '';
  $('account-name').textContent = `Signed in as ${signedIn.label}`;
  $('account').hidden = false;
  $('nav').hidden = false;
  route();
}

async function signOut(note) {
  const leaving = session;
  session = null;
  showSignIn(note);
  await leaving?.signOut();
}

/** The API's 403: this account is not an admin. Nothing else is shown. */
function refuse(error) {
  $('nav').hidden = true;
  leave($('view'));
  show($('view'), h('section', { class: 'panel refusal', 'aria-labelledby': 'refusal-title' },
    h('h1', { id: 'refusal-title', tabindex: '-1' }, 'Not an admin'),
    h('p', {}, `The admin API refused ${session?.label ?? 'this account'}: ${error.message} (${error.status} ${error.code}).`),
    h('p', {}, 'Reports need an account with the admin: true custom claim. Sign out and sign in with an admin account; a claim just given takes effect at the next sign-in.')));
  document.title = 'Not an admin · token-limits admin';
  focusHeading($('refusal-title'));
}

async function signInWithPassword(event) {
  event.preventDefault();
  const error = $('password-error');
  const button = event.submitter ?? event.target.querySelector('button');
  error.hidden = true;
  button.disabled = true;
  try {
    enter(await firebase.signIn($('email').value.trim(), $('password').value));
  } catch (failed) {
    error.textContent = signInFailure(failed);
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

function signInWithDevToken(event) {
  event.preventDefault();
  const error = $('dev-token-error');
  error.hidden = true;
  try {
    enter(devTokenSession($('dev-token').value.trim()));
  } catch (failed) {
    error.textContent = failed.message;
    error.hidden = false;
  }
}

/** Shows the view the location names: `#/route/path?params`. */
function route() {
  if (!session) return;
  const [path, query = ''] = location.hash.replace(/^#\/?/, '').split('?');
  const [name, ...rest] = path.split('/');
  const view = VIEWS.get(name) ?? summary;
  const container = $('view');
  leave(container);
  const args = rest.map(decoded);
  if (view === user && !args[0]) {
    context.navigate('users');
    return;
  }
  leaveView = view.render(context, new URLSearchParams(query), container, ...args) ?? null;
  for (const link of $('nav').querySelectorAll('a')) {
    const active = link.getAttribute('href') === `#/${view === user ? 'users' : view.route}`;
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  $('nav').hidden = false;
  document.title = `${view.title} · token-limits admin`;
  focusHeading(container.querySelector('h1'));
}

/** A path segment as typed; one that is not valid percent-encoding is taken as it is. */
function decoded(segment) {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

boot();
