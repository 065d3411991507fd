// Who is signed in: an admin through the Firebase Auth SDK (Google's, or the Auth emulator),
// or, in a demo- project, a pasted dev token. A session only hands out ID tokens: what they
// allow is for the API to decide.

const DEV_TOKEN_KEY = 'token-limits.dev-token';

/**
 * The Firebase Auth SDK, loaded only when the page offers it, set up for email and password
 * sign-in. Returns { restore(), signIn(email, password) }, each giving a session or null.
 */
export async function firebaseSignIn(config) {
  const [{ initializeApp }, auth] = await Promise.all([
    import('../vendor/firebase/firebase-app.js'),
    import('../vendor/firebase/firebase-auth.js'),
  ]);
  const app = initializeApp({
    apiKey: config.apiKey,
    authDomain: config.authDomain,
    projectId: config.projectId,
  });
  // No popup or redirect resolver: those load Google's gapi script into the page, which its
  // Content-Security-Policy refuses. The sign-in lasts as long as the tab.
  const instance = auth.initializeAuth(app, { persistence: auth.browserSessionPersistence });
  if (config.authEmulatorUrl) {
    // The page says so itself, in its own words and styles.
    auth.connectAuthEmulator(instance, config.authEmulatorUrl, { disableWarnings: true });
  }
  const session = (user) => ({
    label: user.email ?? user.uid,
    refreshable: true,
    token: (forceRefresh) => user.getIdToken(forceRefresh),
    signOut: () => auth.signOut(instance),
  });
  return {
    async restore() {
      await instance.authStateReady();
      return instance.currentUser ? session(instance.currentUser) : null;
    },
    async signIn(email, password) {
      const { user } = await auth.signInWithEmailAndPassword(instance, email, password);
      return session(user);
    },
  };
}

/** A session on a pasted dev token; it cannot be refreshed, only pasted again. */
export function devTokenSession(token) {
  const claims = claimsOf(token);
  if (!claims?.sub) {
    throw new Error('This is not a token: paste the whole line that dev-token printed.');
  }
  sessionStorage.setItem(DEV_TOKEN_KEY, token);
  return {
    label: `${claims.sub} (dev token)`,
    refreshable: false,
    token: async () => token,
    signOut: async () => sessionStorage.removeItem(DEV_TOKEN_KEY),
  };
}

/** The dev token pasted earlier in this tab, if any. */
export function restoreDevToken() {
  const token = sessionStorage.getItem(DEV_TOKEN_KEY);
  if (!token) return null;
  try {
    return devTokenSession(token);
  } catch {
    sessionStorage.removeItem(DEV_TOKEN_KEY);
    return null;
  }
}

/** A JWT's claims, read (not verified: the service verifies). */
function claimsOf(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, '=')));
  } catch {
    return null;
  }
}

/** Why a Firebase sign-in failed, for people. */
export function signInFailure(error) {
  switch (error?.code) {
    case 'auth/invalid-credential':
    case 'auth/invalid-login-credentials':
    case 'auth/user-not-found':
    case 'auth/wrong-password':
      return 'That email and password do not match an account.';
    case 'auth/invalid-email':
      return 'That is not an email address.';
    case 'auth/missing-password':
      return 'Enter your password.';
    case 'auth/user-disabled':
      return 'This account is disabled.';
    case 'auth/too-many-requests':
      return 'Too many attempts: wait a little, then try again.';
    case 'auth/network-request-failed':
      return 'Firebase Auth did not answer. Check the connection and try again.';
    default:
      return `Sign-in failed: ${error?.message ?? error}`;
  }
}
